"""``python -m bench``: serve the floor and the extension's set-ups under gunicorn, load them
round by round, measure in process, and write ``bench/RESULTS.md``."""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import inproc, rss
from . import postgres as bench_postgres
from .apps import OK_BODY
from .load import LoadResult, have_wrk, run_load
from .payloads import Traffic, body, target
from .report import Machine, render
from .server import GunicornServer, pin
from .setups import (
    FLOOR_SETUP,
    LATENCY_CONNECTIONS,
    LATENCY_SETUP,
    SETUPS,
    Setup,
)

HERE = Path(__file__).resolve().parent
REDIS_BASE_URL = "redis://127.0.0.1:6379/13"


@dataclass
class Sample:
    """One load run against one server."""

    setup: str
    round: int
    connections: int
    load: LoadResult
    cpu_seconds: float

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU time per request, in µs."""
        return self.cpu_seconds / self.load.requests * 1e6 if self.load.requests else 0.0


@dataclass
class Row:
    """The figures of one set-up over every round."""

    setup: Setup
    samples: list[Sample] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    hand_ratios: list[float] = field(default_factory=list)
    peak_rss_kib: int = 0

    def median(self, attribute: str) -> float:
        """The median over rounds of a sample's attribute (or of its load result's)."""
        values = []
        for sample in self.samples:
            source = sample if hasattr(sample, attribute) else sample.load
            values.append(float(getattr(source, attribute)))
        return statistics.median(values) if values else 0.0

    @property
    def errors(self) -> int:
        """Requests that did not get the OK envelope, over every round."""
        return sum(s.load.errors for s in self.samples)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Cost of a callback: the extension side by side with a bare Flask endpoint.",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s, small in-process")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; --quick 2)")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 3)")
    parser.add_argument(
        "--connections", type=int, default=2, help="connections of the main runs (default 2)"
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk if installed)",
    )
    parser.add_argument("--only", help="comma-separated set-up slugs (the floor always runs)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis set-ups")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL set-ups")
    parser.add_argument("--no-inproc", action="store_true", help="skip in-process measurements")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS runs")
    parser.add_argument(
        "--rss-callbacks",
        type=int,
        help="callbacks per store in the peak-RSS runs (default 100000; --quick 3000)",
    )
    parser.add_argument(
        "--inproc-keys",
        default="1,10,100,1000",
        help="WithdrawMsgList sizes measured in process (default 1,10,100,1000)",
    )
    parser.add_argument(
        "--inproc-requests",
        type=int,
        help="requests per in-process point with one MsgKey (default 2000; --quick 300)",
    )
    parser.add_argument(
        "--output", type=Path, default=HERE / "RESULTS.md", help="where to write the table"
    )
    parser.add_argument("--json", type=Path, help="also write the raw samples as JSON here")
    parser.add_argument(
        "--note", action="append", default=[], help="a line for RESULTS.md (e.g. what else ran)"
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.duration = args.duration or (1.0 if args.quick else 3.0)
    args.inproc_requests = args.inproc_requests or (300 if args.quick else 2000)
    args.rss_callbacks = args.rss_callbacks or (3000 if args.quick else 100_000)
    return args


def redis_unavailable() -> str | None:
    """Why the Redis set-ups cannot run, or ``None``."""
    if importlib.util.find_spec("redis") is None:
        return "the redis client is not installed"
    if importlib.util.find_spec("flask_oa_recall.store.redis") is None:
        return "flask_oa_recall.store.redis is not available"
    import redis

    try:
        redis.Redis.from_url(REDIS_BASE_URL, socket_connect_timeout=1).ping()
    except Exception as err:
        return f"Redis does not answer at {REDIS_BASE_URL}: {err}"
    return None


def clean_redis(prefix: str, url: str = REDIS_BASE_URL) -> int:
    """Delete the keys this run wrote under ``prefix`` (database 13 unless ``url`` says).

    The store puts its prefix in a hash tag (``{prefix}:d:...``); plain ``prefix...`` keys are
    matched too, should a store version not tag them.
    """
    import redis

    client = redis.Redis.from_url(url)
    removed = 0
    try:
        for pattern in (f"{{{prefix}}}*", f"{prefix}*"):
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) == 500:
                    removed += client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += client.unlink(*batch)
        return removed
    finally:
        client.close()


def choose_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load generator CPUs): the last allowed CPU for servers, the rest for load."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return {allowed[-1]}, set(allowed[:-1])


def server_env(setup: Setup, instance: Path, redis_prefix: str) -> dict[str, str]:
    """The ``BENCH_*`` variables of ``setup``'s server."""
    if setup.is_floor:
        return {"BENCH_APP": setup.app}
    store = {
        "memory": "memory://",
        "sqlite": "",
        "redis": f"{REDIS_BASE_URL}?prefix={redis_prefix}",
        "postgres": bench_postgres.URL,
    }[setup.store or ""]
    return {
        "BENCH_APP": setup.app,
        "BENCH_STORE": store,
        "BENCH_SIGNED": "1" if setup.traffic.signed else "0",
        "BENCH_RECEIVERS": "1",
        "BENCH_INSTANCE": str(instance / setup.slug),
    }


def warm_up(server: GunicornServer, traffic: Traffic, requests: int = 50) -> None:
    """Send a few requests one by one; fail loudly unless each gets the OK envelope."""
    path = target(traffic)
    prefix = "warm" + secrets.token_hex(3)
    for n in range(requests):
        # Generous: the first request of a worker that just started on a busy machine is slow.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            headers = {"Content-Type": "application/json"}
            conn.request("POST", path, body(traffic, prefix, n), headers)
            response = conn.getresponse()
            answer = response.read()
        finally:
            conn.close()
        if response.status != 200 or answer != OK_BODY:
            raise RuntimeError(
                f"{server.name} answered {response.status} {answer[:200]!r} during warm-up"
            )


def measure(
    server: GunicornServer,
    setup: Setup,
    round_: int,
    *,
    generator: str,
    connections: int,
    seconds: float,
    load_cpus: set[int] | None,
) -> Sample:
    """One load run, with the workers' CPU time read before and after."""
    before = server.cpu_seconds()
    load = run_load(
        generator,
        server.url,
        setup.traffic,
        connections=connections,
        seconds=seconds,
        cpus=load_cpus,
    )
    used = server.cpu_seconds() - before
    server.check_workers()
    return Sample(setup.slug, round_, connections, load, used)


def measure_rss(
    stores: Sequence[str],
    redis_prefix: str,
    *,
    generator: str,
    total: int,
    server_cpus: set[int] | None,
    load_cpus: set[int] | None,
    log: Callable[[str], None],
) -> list[rss.RssPoint]:
    """Peak RSS of a fresh worker per store after about 1,000 and after ``total`` callbacks."""
    points = []
    with tempfile.TemporaryDirectory(prefix="oa-recall-bench-rss-") as tmp:
        for store in stores:
            setup = Setup(f"rss-{store}", f"peak RSS, {store}", store)
            server = GunicornServer(
                setup.slug,
                server_env(setup, Path(tmp), redis_prefix),
                cpus=server_cpus,
                log_dir=Path(tmp),
            )
            try:
                server.wait_ready()
                warm_up(server, Traffic(), requests=20)
                points.append(
                    rss.measure(
                        store,
                        server,
                        generator=generator,
                        first=min(1000, total),
                        total=total,
                        load_cpus=load_cpus,
                        progress=log,
                    )
                )
                server.check_workers()
            finally:
                server.stop()
                if store == "redis":
                    clean_redis(redis_prefix)
    return points


def round_order(setups: Sequence[Setup], round_: int) -> list[Setup]:
    """Rotate the order each round so that no set-up always runs right after the floor."""
    shift = round_ % len(setups) if setups else 0
    return [*setups[shift:], *setups[:shift]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if have_wrk() else "python"
    server_cpus, load_cpus = choose_cpus()
    pin(load_cpus)

    notes: list[str] = list(args.note)
    setups = list(SETUPS)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - {s.slug for s in SETUPS}
        if unknown:
            print(f"unknown set-up(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        # A set-up compared with a hand-written route brings that route along.
        wanted |= {s.handwritten for s in SETUPS if s.slug in wanted and s.handwritten}
        setups = [s for s in setups if s.slug in wanted]
    if any(s.store == "redis" for s in setups):
        why = "--no-redis was given" if args.no_redis else redis_unavailable()
        if why is not None:
            setups = [s for s in setups if s.store != "redis"]
            notes.append(f"Redis set-ups skipped: {why}.")
    if any(s.store == "postgres" for s in setups):
        why = "--no-postgres was given" if args.no_postgres else bench_postgres.unavailable()
        if why is not None:
            setups = [s for s in setups if s.store != "postgres"]
            notes.append(f"PostgreSQL set-ups skipped: {why}.")
    with_postgres = any(s.store == "postgres" for s in setups)
    latency_setup = next((s for s in setups if s.slug == LATENCY_SETUP), None)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(
        f"bench: {len(setups)} set-ups + floor, {args.rounds} rounds of {args.duration:g} s,"
        f" generator {generator}, servers on CPUs {server_cpus}, load on {load_cpus}"
    )
    redis_prefix = f"oa-recall-bench-{secrets.token_hex(4)}:"
    rows = {s.slug: Row(s) for s in [FLOOR_SETUP, *setups]}
    latency_rows = {FLOOR_SETUP.slug: Row(FLOOR_SETUP)}
    if latency_setup is not None:
        latency_rows[latency_setup.slug] = Row(latency_setup)
    servers: dict[str, GunicornServer] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="oa-recall-bench-") as tmp:
        tmp_path = Path(tmp)
        try:
            for setup in [FLOOR_SETUP, *setups]:
                servers[setup.slug] = GunicornServer(
                    setup.slug,
                    server_env(setup, tmp_path, redis_prefix),
                    cpus=server_cpus,
                    log_dir=tmp_path,
                )
            for setup in [FLOOR_SETUP, *setups]:
                server = servers[setup.slug]
                try:
                    server.wait_ready()
                except RuntimeError:
                    log((tmp_path / f"{setup.slug}.log").read_text(errors="replace")[-2000:])
                    raise
                warm_up(server, setup.traffic)

            def run(setup: Setup, round_: int, connections: int) -> Sample:
                return measure(
                    servers[setup.slug],
                    setup,
                    round_,
                    generator=generator,
                    connections=connections,
                    seconds=args.duration,
                    load_cpus=load_cpus,
                )

            group = 3
            for round_ in range(args.rounds):
                order = round_order(setups, round_)
                floor_before = run(FLOOR_SETUP, round_, args.connections)
                rows[FLOOR_SETUP.slug].samples.append(floor_before)
                for start in range(0, len(order), group):
                    batch = [run(s, round_, args.connections) for s in order[start : start + group]]
                    floor_after = run(FLOOR_SETUP, round_, args.connections)
                    rows[FLOOR_SETUP.slug].samples.append(floor_after)
                    floor_cpu = (
                        floor_before.cpu_us_per_request + floor_after.cpu_us_per_request
                    ) / 2
                    for sample in batch:
                        row = rows[sample.setup]
                        row.samples.append(sample)
                        if sample.cpu_us_per_request:
                            row.ratios.append(floor_cpu / sample.cpu_us_per_request)
                    floor_before = floor_after
                if latency_setup is not None:
                    f8 = run(FLOOR_SETUP, round_, LATENCY_CONNECTIONS)
                    e8 = run(latency_setup, round_, LATENCY_CONNECTIONS)
                    latency_rows[FLOOR_SETUP.slug].samples.append(f8)
                    latency_rows[latency_setup.slug].samples.append(e8)
                    if e8.cpu_us_per_request:
                        latency_rows[latency_setup.slug].ratios.append(
                            f8.cpu_us_per_request / e8.cpu_us_per_request
                        )
                for row in rows.values():
                    hand = rows.get(row.setup.handwritten or "")
                    mine = [x for x in row.samples if x.round == round_]
                    theirs = [x for x in hand.samples if x.round == round_] if hand else []
                    if mine and theirs and mine[-1].cpu_us_per_request:
                        row.hand_ratios.append(
                            theirs[-1].cpu_us_per_request / mine[-1].cpu_us_per_request
                        )
                summary = ", ".join(
                    f"{row.setup.slug} {row.ratios[-1]:.2f}" for row in rows.values() if row.ratios
                )
                log(f"round {round_ + 1}/{args.rounds} done: floor/extension CPU ratios: {summary}")
            for slug, server in servers.items():
                rows[slug].peak_rss_kib = server.peak_rss_kib()
        finally:
            for server in servers.values():
                server.stop()
            if any(s.store == "redis" for s in setups):
                removed = clean_redis(redis_prefix)
                log(f"removed {removed} Redis keys under {redis_prefix}")
            if with_postgres:
                bench_postgres.drop_schema()
    served_seconds = time.monotonic() - started

    rss_points: list[rss.RssPoint] = []
    if not args.no_rss:
        stores = sorted({s.store for s in setups if s.store and not s.is_floor})
        rss_points = measure_rss(
            stores,
            redis_prefix,
            generator=generator,
            total=args.rss_callbacks,
            server_cpus=server_cpus,
            load_cpus=load_cpus,
            log=log,
        )

    points: list[inproc.Point] = []
    floor_us = 0.0
    if not args.no_inproc:
        key_counts = tuple(int(k) for k in args.inproc_keys.split(","))
        pin(server_cpus)
        with_redis = any(s.store == "redis" for s in setups)
        stores = (
            "memory",
            "sqlite",
            *(["redis"] if with_redis else []),
            *(["postgres"] if with_postgres else []),
        )
        points, floor_us = inproc.measure(
            stores=stores,
            redis_url=f"{REDIS_BASE_URL}?prefix={redis_prefix}",
            postgres_url=bench_postgres.URL,
            key_counts=key_counts,
            budget=args.inproc_requests,
            repeats=3 if args.quick else 5,
            progress=log,
        )
        pin(load_cpus)
        if with_redis:
            clean_redis(redis_prefix)
        if with_postgres:
            bench_postgres.drop_schema()

    text = render(
        Machine.describe(),
        rows=list(rows.values()),
        latency_rows=list(latency_rows.values()) if latency_setup else [],
        points=points,
        inproc_floor_us=floor_us,
        rss_points=rss_points,
        generator=generator,
        rounds=args.rounds,
        duration=args.duration,
        connections=args.connections,
        pinned=(server_cpus, load_cpus),
        notes=notes,
        served_seconds=served_seconds,
        command=" ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
    )
    args.output.write_text(text)
    print(text)
    log(f"wrote {args.output}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": {
                        slug: {
                            "samples": [asdict(s) for s in row.samples],
                            "ratios": row.ratios,
                            "hand_ratios": row.hand_ratios,
                            "peak_rss_kib": row.peak_rss_kib,
                        }
                        for slug, row in rows.items()
                    },
                    "inproc": [asdict(p) for p in points],
                    "rss": [asdict(p) for p in rss_points],
                },
                indent=1,
            )
        )
    errors = (
        sum(row.errors for row in rows.values())
        + sum(row.errors for row in latency_rows.values())
        + sum(p.errors for p in rss_points)
    )
    if errors:
        log(f"{errors} requests did not get the OK envelope")
        return 1
    return 0
