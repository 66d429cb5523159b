"""A/B under gunicorn: ``python -m bench.ab SLUG COPY [--rounds N] [--duration S]``.

Serves the floor, the set-up ``SLUG`` with this package (A) and with a modified copy of it (B:
``COPY`` is a directory holding a ``flask_oa_recall`` package), then loads them in alternating
order and prints each one's median worker CPU per request. It is how the changes listed in
``bench/README.md`` were judged in place, where the in-process figures can mislead.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .load import run_load
from .run import choose_cpus, clean_redis, server_env, warm_up
from .server import GunicornServer, pin
from .setups import FLOOR_SETUP, SETUPS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print one line per server."""
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("slug", choices=[s.slug for s in SETUPS])
    parser.add_argument("copy", type=Path, help="directory that holds a modified flask_oa_recall")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--generator", choices=("wrk", "python"), default="wrk")
    args = parser.parse_args(argv)
    if not (args.copy / "flask_oa_recall" / "__init__.py").is_file():
        parser.error(f"{args.copy} holds no flask_oa_recall package")

    setup = next(s for s in SETUPS if s.slug == args.slug)
    server_cpus, load_cpus = choose_cpus()
    pin(load_cpus)
    prefix = f"oa-recall-bench-ab-{secrets.token_hex(4)}:"
    cpu: dict[str, list[float]] = {"floor": [], "A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="oa-recall-ab-") as tmp:
        base = Path(tmp)
        servers = {
            "floor": GunicornServer(
                "floor", server_env(FLOOR_SETUP, base, prefix), cpus=server_cpus, log_dir=base
            ),
            "A": GunicornServer(
                "A", server_env(setup, base / "a", prefix), cpus=server_cpus, log_dir=base
            ),
            "B": GunicornServer(
                "B",
                {**server_env(setup, base / "b", prefix), "PYTHONPATH": str(args.copy.resolve())},
                cpus=server_cpus,
                log_dir=base,
            ),
        }
        try:
            for name, server in servers.items():
                server.wait_ready()
                warm_up(server, FLOOR_SETUP.traffic if name == "floor" else setup.traffic)
            for round_ in range(args.rounds):
                pair = ["A", "B"] if round_ % 2 == 0 else ["B", "A"]
                for name in ["floor", *pair, "floor", *reversed(pair), "floor"]:
                    server = servers[name]
                    traffic = FLOOR_SETUP.traffic if name == "floor" else setup.traffic
                    before = server.cpu_seconds()
                    load = run_load(
                        args.generator,
                        server.url,
                        traffic,
                        connections=2,
                        seconds=args.duration,
                        cpus=load_cpus,
                    )
                    if load.errors:
                        raise RuntimeError(f"{name}: {load.errors} requests failed")
                    cpu[name].append((server.cpu_seconds() - before) / load.requests * 1e6)
        finally:
            for server in servers.values():
                server.stop()
            if setup.store == "redis":
                clean_redis(prefix)
    floor = statistics.median(cpu["floor"])
    for name, values in cpu.items():
        median = statistics.median(values)
        print(
            f"{name:5s} median CPU/request {median:6.1f} µs, floor/this {floor / median:.3f};"
            f" runs: {', '.join(f'{v:.0f}' for v in values)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
