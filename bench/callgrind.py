"""Instruction counts that do not depend on the machine's load: ``python -m bench.callgrind``.

Runs a fixed number of signed callbacks (one MsgKey each, unique keys) in process through the
extension with the default SQLite store and through the hand-written route, each under
valgrind's callgrind, and prints instructions per callback and their ratio
(hand-written / extension, as in ``RESULTS.md``). Only the measured loop is counted: it runs
inside ``functools.reduce`` and callgrind collects only there (``--toggle-collect``), so the
interpreter's start-up, the imports and the warm-up callbacks are left out. Ids, times and
``PYTHONHASHSEED`` are fixed, so two runs of the same code count the same instructions (to a
few hundred per callback).

- ``python -m bench.callgrind``: measure and print.
- ``python -m bench.callgrind --check``: also compare the ratio with ``bench/callgrind.json``
  and exit 1 if it fell back by more than the margin recorded there (CI runs this).
- ``python -m bench.callgrind --record``: measure and write ``bench/callgrind.json``.
- ``BENCH_CALLGRIND_PACKAGE=/tmp/copy python -m bench.callgrind``: count a modified copy of the
  package (``/tmp/copy/flask_oa_recall``) instead of this one, for A/B comparisons.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "callgrind.json"
#: The ratio may fall this far below the recorded one before ``--check`` fails.
DEFAULT_MARGIN = 0.03
CALLBACKS = 200
WARM_UP = 100
#: The fixed clock the callbacks are signed and received at.
FIXED_NOW = 1_700_000_000.0
ROUTES = ("extension", "handwritten")


def _fix_randomness_and_time() -> None:
    """Delivery ids and the clock: the same values on every run."""
    import secrets

    counter = itertools.count()
    ticks = itertools.count()
    secrets.token_hex = lambda nbytes=None: f"{next(counter):0{2 * (nbytes or 32)}x}"
    time.time = lambda: FIXED_NOW + next(ticks) * 0.001


def _outcomes_with_the_next_keep() -> None:
    """Under load the SQLite store records an outcome with the next callback's keep, and its
    thread records one only after ``GROUP_SECONDS`` without a callback (about 1 in 30 at
    2,000 callbacks a second). Under valgrind a callback takes some 50 times longer, so the
    thread would fire every few callbacks, and when depends on the machine: it is held off
    here, so that the count is the steady state under load, and repeatable."""
    try:
        from flask_oa_recall.store import grouped
    except ImportError:  # a copy from before grouped outcomes (BENCH_CALLGRIND_PACKAGE)
        return
    grouped.GROUP_SECONDS = 3600.0


def _app(route: str, instance: str, store: str | None) -> Any:
    from .apps import create_extension, create_handwritten

    if route == "extension":
        return create_extension(store=store, signed=True, receivers=1, instance_path=instance)
    return create_handwritten(store=store, instance_path=instance)


def _store_url(store: str, prefix: str) -> str | None:
    """``OA_RECALL_STORE`` for ``store`` (``None``: the default SQLite file)."""
    if store == "redis":
        from .run import REDIS_BASE_URL

        return f"{REDIS_BASE_URL}?prefix={prefix}"
    return {"memory": "memory://", "sqlite": None}[store]


def child(route: str, callbacks: int, warm_up: int, store: str = "sqlite") -> None:
    """Run inside valgrind: warm up, then the measured loop inside ``functools.reduce``."""
    copy = os.environ.get("BENCH_CALLGRIND_PACKAGE")
    if copy:
        sys.path.insert(0, copy)  # a modified copy of flask_oa_recall, measured instead
    _fix_randomness_and_time()
    _outcomes_with_the_next_keep()
    from . import inproc
    from .payloads import Traffic, body, target

    traffic = Traffic()
    prefix = f"oa-recall-callgrind-{os.getpid()}:"
    with tempfile.TemporaryDirectory(prefix="oa-recall-callgrind-") as tmp:
        app = _app(route, tmp, _store_url(store, prefix))
        environ = inproc._environ(target(traffic, now=FIXED_NOW))
        for n in range(warm_up):
            inproc.call(app, environ, body(traffic, "warm", n))
        bodies = [body(traffic, "measured", n) for n in range(callbacks)]

        def one(answers: int, data: bytes) -> int:
            return answers + len(inproc.call(app, environ, data))

        # callgrind counts only inside functools.reduce (see --toggle-collect below).
        answered = functools.reduce(one, bodies, 0)
        if answered != callbacks * len(inproc.call(app, environ, body(traffic, "last", 0))):
            raise SystemExit("a measured callback did not get the OK envelope")
        if route == "extension":
            app.extensions["oa_recall"].close()
        if store == "redis":
            from .run import clean_redis

            clean_redis(prefix)


def _total(out_file: Path) -> int:
    for line in out_file.read_text().splitlines():
        match = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if match:
            return int(match.group(1))
    raise RuntimeError(f"no instruction total in {out_file}")


def count(route: str, callbacks: int, warm_up: int, workdir: Path, store: str = "sqlite") -> int:
    """Instructions of ``callbacks`` callbacks through ``route``, under callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    out_file = workdir / f"callgrind.{route}.out"
    command = [
        valgrind,
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=functools_reduce",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        "bench.callgrind",
        "--child",
        route,
        "--callbacks",
        str(callbacks),
        "--warm-up",
        str(warm_up),
        "--store",
        store,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        command, cwd=HERE.parent, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"callgrind run of {route} failed:\n{done.stderr[-3000:]}")
    total = _total(out_file)
    if total == 0:
        raise RuntimeError(
            "callgrind counted nothing: the Python binary has no symbol functools_reduce"
            " (a stripped build?); run with a Python that keeps its symbols"
        )
    return total


def measure(callbacks: int, warm_up: int, store: str = "sqlite") -> dict[str, Any]:
    """Instructions per callback for each route (run side by side), and their ratio."""
    with (
        tempfile.TemporaryDirectory(prefix="oa-recall-callgrind-") as tmp,
        ThreadPoolExecutor(max_workers=len(ROUTES)) as pool,
    ):
        counts = pool.map(lambda r: count(r, callbacks, warm_up, Path(tmp), store), ROUTES)
        totals = dict(zip(ROUTES, counts, strict=True))
    per = {route: totals[route] / callbacks for route in ROUTES}
    return {
        "store": store,
        "callbacks": callbacks,
        "warm_up": warm_up,
        "extension_per_callback": round(per["extension"]),
        "handwritten_per_callback": round(per["handwritten"]),
        "ratio": round(per["handwritten"] / per["extension"], 4),
    }


def main(argv: Sequence[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    """Measure, and compare with or record the baseline; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__)
    parser.add_argument("--child", choices=ROUTES, help=argparse.SUPPRESS)
    parser.add_argument("--store", choices=("sqlite", "memory", "redis"), default="sqlite")
    parser.add_argument("--callbacks", type=int, default=CALLBACKS)
    parser.add_argument("--warm-up", type=int, default=WARM_UP)
    parser.add_argument("--check", action="store_true", help="fail if the ratio fell back")
    parser.add_argument("--record", action="store_true", help="write the baseline")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.callbacks, args.warm_up, args.store)
        return 0
    if (args.check or args.record) and args.store != "sqlite":
        parser.error("the baseline is for the default SQLite store")
    started = time.monotonic()
    figures = measure(args.callbacks, args.warm_up, args.store)
    out(
        f"callgrind, {figures['callbacks']} signed callbacks, 1 MsgKey, {args.store} store:"
        f" extension {figures['extension_per_callback']:,} instructions per callback,"
        f" hand-written route {figures['handwritten_per_callback']:,};"
        f" hand-written / extension = {figures['ratio']:.4f}"
        f" ({time.monotonic() - started:.0f} s)"
    )
    if args.record:
        recorded = {**figures, "margin": DEFAULT_MARGIN}
        args.baseline.write_text(json.dumps(recorded, indent=2) + "\n")
        out(f"wrote {args.baseline}")
    if args.check:
        baseline = json.loads(args.baseline.read_text())
        floor = baseline["ratio"] * (1 - baseline["margin"])
        verdict = "ok" if figures["ratio"] >= floor else "FELL BACK"
        out(
            f"baseline ratio {baseline['ratio']:.4f} (margin {baseline['margin']:.0%}):"
            f" lowest accepted {floor:.4f}, measured {figures['ratio']:.4f}: {verdict}"
        )
        if figures["ratio"] < floor:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
