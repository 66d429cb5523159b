"""Profile the extension in process: ``python -m bench.profile [--store sqlite] [--keys 1]``.

Runs signed callbacks with unique MsgKeys through a direct WSGI call under cProfile and prints
the functions that take the most time (own time and cumulative).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pstats
import secrets
import tempfile
import time
from collections.abc import Sequence

from . import inproc
from .apps import create_extension, create_floor
from .callgrind import FIXED_NOW
from .payloads import Traffic, body, target

REDIS_URL = "redis://127.0.0.1:6379/13"


def main(argv: Sequence[str] | None = None) -> int:
    """Profile one set-up and print the top of the profile."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--store", choices=("floor", "memory", "sqlite", "redis"), default="memory")
    parser.add_argument("--keys", type=int, default=1)
    parser.add_argument("--kind", choices=("recall", "duplicates", "other"), default="recall")
    parser.add_argument("--unsigned", action="store_true")
    parser.add_argument("--receivers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    args = parser.parse_args(argv)

    traffic = Traffic(kind=args.kind, keys=args.keys, signed=not args.unsigned)
    prefix = f"oa-recall-bench-profile-{secrets.token_hex(4)}:"
    with tempfile.TemporaryDirectory(prefix="oa-recall-profile-") as tmp:
        if args.store == "floor":
            app = create_floor()
        else:
            store = {
                "memory": "memory://",
                "sqlite": None,
                "redis": f"{REDIS_URL}?prefix={prefix}",
            }[args.store]
            app = create_extension(
                store=store, signed=traffic.signed, receivers=args.receivers, instance_path=tmp
            )
        # A clock held near one instant: on a busy machine the run may outlast the 60 s window
        # of a Sign made at its start.
        ticks = itertools.count()
        time.time = lambda: FIXED_NOW + next(ticks) * 0.001
        environ = inproc._environ(target(traffic, now=FIXED_NOW))
        bodies = [body(traffic, "warm", n) for n in range(200)]
        for data in bodies:
            inproc.call(app, environ, data)
        bodies = [body(traffic, secrets.token_hex(4), n) for n in range(args.requests)]
        profiler = cProfile.Profile()
        profiler.enable()
        for data in bodies:
            inproc.call(app, environ, data)
        profiler.disable()
        if args.store == "redis":
            from .run import clean_redis

            clean_redis(prefix)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"{args.requests} requests, {total / args.requests * 1e6:.1f} µs each under cProfile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
