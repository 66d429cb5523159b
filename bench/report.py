"""The Markdown written to ``bench/RESULTS.md``."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from . import inproc, rss
from .setups import LATENCY_CONNECTIONS, LATENCY_TARGET_MS

if TYPE_CHECKING:
    from .run import Row

#: Target for each extra MsgKey in a callback, in µs (default store).
PER_KEY_TARGET_US = 8.0


@dataclass(frozen=True)
class Machine:
    """What the figures were measured on."""

    cpu: str
    cores: int
    python: str
    versions: dict[str, str]
    date: str

    @classmethod
    def describe(cls) -> Machine:
        """This machine, now."""
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as info:
                for line in info:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        versions = {}
        for dist in ("flask", "werkzeug", "gunicorn", "marshmallow", "blinker", "redis", "hiredis"):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                versions[dist] = "not installed"
        return cls(
            cpu=cpu,
            cores=os.cpu_count() or 0,
            python=f"{platform.python_implementation()} {platform.python_version()}",
            versions=versions,
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )


def _met(value: float | None, target: float | None, *, higher_is_better: bool) -> str:
    if value is None or target is None:
        return ""
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**not met**"


def render(
    machine: Machine,
    *,
    rows: Sequence[Row],
    latency_rows: Sequence[Row],
    points: Sequence[inproc.Point],
    inproc_floor_us: float,
    generator: str,
    rss_points: Sequence[rss.RssPoint] = (),
    rounds: int,
    duration: float,
    connections: int,
    pinned: tuple[set[int] | None, set[int] | None],
    notes: Sequence[str],
    served_seconds: float,
    command: str = "python -m bench",
) -> str:
    """The whole results page."""
    servers, load = pinned
    out = [
        "# Benchmark results",
        "",
        "Written by `python -m bench` (see `bench/README.md`); figures from one run, not edited.",
        "",
        f"- Command: `{command}`",
        f"- Date: {machine.date}",
        f"- Machine: {machine.cpu}, {machine.cores} cores; {machine.python}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in machine.versions.items()),
        f"- Load generator: {generator}, {connections} connection(s) for the main table;"
        f" {rounds} rounds of {duration:g} s per set-up; the floor runs before and after each"
        " group of 3 set-ups, and each ratio uses the mean of those two floor runs",
        f"- Pinning: servers on CPU {sorted(servers) if servers else 'not pinned'},"
        f" load generator on CPU {sorted(load) if load else 'not pinned'}",
        "- Servers: gunicorn, 1 sync worker each, same settings for every set-up; one no-op"
        " `messages_recalled` receiver connected",
        f"- Served part took {served_seconds:.0f} s",
        "",
    ]
    for note in notes:
        out.append(f"> {note}")
        out.append("")

    out += [
        "## Under gunicorn, one sync worker",
        "",
        "CPU per request is the worker's utime+stime (`/proc/<pid>/stat`) over the run divided"
        " by the requests answered. **Ratio** is floor CPU per request / set-up CPU per request"
        " in the same round, median over rounds (1.00 = as cheap as the bare route)."
        " **hand/ext** is the hand-written route's CPU per request (same store) / the"
        " extension's, in the same round, median over rounds.",
        "",
        "| Set-up | req/s | p50 ms | p99 ms | CPU µs/req | ratio floor/ext | target |"
        " hand/ext | target | peak RSS MiB | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for row in rows:
        ratio = _median(row.ratios) if row.ratios else None
        hand = _median(row.hand_ratios) if row.hand_ratios else None
        out.append(
            f"| {row.setup.title} | {row.median('rps'):.0f} | {row.median('p50_ms'):.2f} |"
            f" {row.median('p99_ms'):.2f} | {row.median('cpu_us_per_request'):.0f} |"
            f" {'' if ratio is None else f'{ratio:.2f}'} | {_target(ratio, row.setup.target)} |"
            f" {'' if hand is None else f'{hand:.2f}'} |"
            f" {_target(hand, row.setup.hand_target)} |"
            f" {row.peak_rss_kib / 1024:.1f} | {row.errors} |"
        )
    out.append("")

    if latency_rows:
        out += [
            f"## {LATENCY_CONNECTIONS} concurrent connections, one sync worker",
            "",
            "| Set-up | req/s | p50 ms | p99 ms | CPU µs/req | ratio floor/ext | p99 target |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for row in latency_rows:
            p99 = row.median("p99_ms")
            target = (
                f"< {LATENCY_TARGET_MS:g} ms {_met(p99, LATENCY_TARGET_MS, higher_is_better=False)}"
                if not row.setup.is_floor
                else ""
            )
            ratio_text = f"{_median(row.ratios):.2f}" if row.ratios else ""
            out.append(
                f"| {row.setup.title} | {row.median('rps'):.0f} | {row.median('p50_ms'):.2f} |"
                f" {p99:.2f} | {row.median('cpu_us_per_request'):.0f} | {ratio_text} | {target} |"
            )
        out.append("")

    if rss_points:
        out += _rss_table(rss_points)
    if points:
        out += _inproc_tables(points, inproc_floor_us)
    return "\n".join(out)


def _rss_table(points: Sequence[rss.RssPoint]) -> list[str]:
    out = [
        "## Peak memory of a worker over many callbacks",
        "",
        "A fresh gunicorn (one sync worker) per store, signed callbacks with unique MsgKeys;"
        " the worker's `VmHWM` after the first callbacks and after all of them.",
        "",
        "| Store | callbacks | peak RSS MiB | callbacks | peak RSS MiB | growth MiB | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in points:
        growth = p.growth_mib
        met = _met(growth, rss.RSS_TARGET_MIB, higher_is_better=False)
        out.append(
            f"| {p.store} | {p.first_requests} | {p.first_kib / 1024:.1f} | {p.total_requests} |"
            f" {p.total_kib / 1024:.1f} | {growth:.1f} | ≤ {rss.RSS_TARGET_MIB:g} MiB {met} |"
        )
    out.append("")
    return out


def _target(value: float | None, target: float | None) -> str:
    if not target:
        return ""
    return f"≥ {target:.2f} {_met(value, target, higher_is_better=True)}"


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _inproc_tables(points: Sequence[inproc.Point], floor_us: float) -> list[str]:
    stores = sorted({p.store for p in points}, key=lambda s: (s != "memory", s))
    keys = sorted({p.keys for p in points if p.receivers == 1})
    receivers = sorted({p.receivers for p in points if p.keys == 1})
    by = {(p.store, p.keys, p.receivers): p.us_per_request for p in points}
    out = [
        "## In process (direct WSGI call, no server)",
        "",
        f"Signed callbacks, unique MsgKeys. The bare route takes {floor_us:.1f} µs per request"
        " here. µs per request, median of repeats.",
        "",
        "### Size of `WithdrawMsgList` (one receiver)",
        "",
        "| Store | "
        + " | ".join(f"{k} key{'s' if k > 1 else ''}" for k in keys)
        + " | µs per extra MsgKey | target |",
        "| --- | " + " | ".join("---:" for _ in keys) + " | ---: | --- |",
    ]
    for store in stores:
        slope = inproc.per_extra_key(points, store)
        target = (
            f"≤ {PER_KEY_TARGET_US:g} µs {_met(slope, PER_KEY_TARGET_US, higher_is_better=False)}"
            if slope is not None
            else ""
        )
        out.append(
            f"| {store} | "
            + " | ".join(f"{by[(store, k, 1)]:.1f}" for k in keys)
            + f" | {'' if slope is None else f'{slope:.2f}'} | {target} |"
        )
    out += [
        "",
        "### Connected `messages_recalled` receivers (one MsgKey)",
        "",
        "| Store | "
        + " | ".join(f"{r} receiver{'s' if r != 1 else ''}" for r in receivers)
        + " | µs per extra receiver |",
        "| --- | " + " | ".join("---:" for _ in receivers) + " | ---: |",
    ]
    for store in stores:
        slope = inproc.per_extra_receiver(points, store)
        out.append(
            f"| {store} | "
            + " | ".join(f"{by[(store, 1, r)]:.1f}" for r in receivers)
            + f" | {'' if slope is None else f'{slope:.2f}'} |"
        )
    out.append("")
    return out
