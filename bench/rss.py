"""Does a worker's memory stay bounded? Peak RSS after about 1,000 and after 100,000 callbacks.

Each store gets a fresh gunicorn (one sync worker) receiving signed callbacks with unique
MsgKeys; the worker's ``VmHWM`` is read once it has answered ``first`` callbacks and again after
``total``. The target: the second within 10 MiB of the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .load import run_load
from .payloads import Traffic
from .server import GunicornServer

RSS_TARGET_MIB = 10.0


@dataclass(frozen=True)
class RssPoint:
    """One store's peak RSS after ``first_requests`` and after ``total_requests`` callbacks."""

    store: str
    first_requests: int
    first_kib: int
    total_requests: int
    total_kib: int
    errors: int

    @property
    def growth_mib(self) -> float:
        """How much the peak grew between the two readings, in MiB."""
        return (self.total_kib - self.first_kib) / 1024


def measure(
    store: str,
    server: GunicornServer,
    *,
    generator: str,
    first: int,
    total: int,
    load_cpus: set[int] | None,
    progress: Callable[[str], None] = lambda _: None,
) -> RssPoint:
    """Send callbacks until ``first`` are answered, read the peak, go on to ``total``, read it."""
    traffic = Traffic()
    answered = 0
    errors = 0
    rate = 1000.0  # requests per second, re-estimated after each chunk

    def until(count: int) -> None:
        nonlocal answered, errors, rate
        idle = 0
        while answered < count:
            seconds = min(10.0, max(1.0, (count - answered) / rate))
            result = run_load(
                generator, server.url, traffic, connections=2, seconds=seconds, cpus=load_cpus
            )
            idle = idle + 1 if result.requests == 0 else 0
            if idle == 3:
                raise RuntimeError(f"{server.name} answered nothing in three runs")
            answered += result.requests
            errors += result.errors
            rate = max(1.0, result.rps)

    until(first)
    first_requests, first_kib = answered, server.peak_rss_kib()
    until(total)
    point = RssPoint(store, first_requests, first_kib, answered, server.peak_rss_kib(), errors)
    progress(
        f"peak RSS, {store}: {point.first_kib / 1024:.1f} MiB after {point.first_requests},"
        f" {point.total_kib / 1024:.1f} MiB after {point.total_requests}"
    )
    return point
