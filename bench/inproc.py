"""In-process measurements (no server): how the cost grows with MsgKeys and with receivers.

Each request is a direct WSGI call with a prepared environ, so the figures are the
extension's and Flask's own work, without HTTP parsing or sockets.
"""

from __future__ import annotations

import io
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

from .apps import create_extension, create_floor, quiet
from .payloads import Traffic, body, target

KEY_COUNTS = (1, 10, 100, 1000)
RECEIVER_COUNTS = (0, 1, 10)


@dataclass(frozen=True)
class Point:
    """One in-process measurement."""

    store: str
    keys: int
    receivers: int
    us_per_request: float


def _environ(path_and_query: str) -> dict[str, Any]:
    path, _, query = path_and_query.partition("?")
    builder = EnvironBuilder(path=path, query_string=query, method="POST", data=b"")
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    if not status.startswith("200"):
        raise RuntimeError(f"benchmark request answered {status}")
    return None


def call(app: Flask, environ: dict[str, Any], data: bytes) -> bytes:
    """One WSGI request; returns the response body."""
    env = dict(environ)
    env["wsgi.input"] = io.BytesIO(data)
    env["CONTENT_LENGTH"] = str(len(data))
    result = app(env, _start_response)
    try:
        return b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def time_requests(app: Flask, traffic: Traffic, *, requests: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean CPU µs per request, over ``requests`` requests each.

    CPU time of this process (not wall time), so that a busy neighbour on a shared machine
    inflates the figures less.
    """
    environ = _environ(target(traffic))
    samples = []
    for _ in range(repeats):
        prefix = secrets.token_hex(4)
        bodies = [body(traffic, prefix, n) for n in range(requests)]
        started = time.process_time()
        for data in bodies:
            call(app, environ, data)
        samples.append((time.process_time() - started) / requests * 1e6)
    return statistics.median(samples)


def measure(
    *,
    stores: Sequence[str] = ("memory", "sqlite"),
    redis_url: str | None = None,
    postgres_url: str | None = None,
    key_counts: Iterable[int] = KEY_COUNTS,
    receiver_counts: Iterable[int] = RECEIVER_COUNTS,
    budget: int = 2000,
    repeats: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[list[Point], float]:
    """Measure every (store, keys) with one receiver and every (store, receivers) with one key.

    Returns the points and the floor's µs per request. ``budget`` bounds MsgKeys per repeat.
    ``redis_url`` is the store URL (with its own ``?prefix=``) of the ``redis`` store, and
    ``postgres_url`` (with its own ``?schema=``) that of the ``postgres`` store.
    """
    quiet()
    points: list[Point] = []
    key_counts = tuple(key_counts)
    receiver_counts = tuple(receiver_counts)
    floor_us = time_requests(create_floor(), Traffic(), requests=budget, repeats=repeats)
    with tempfile.TemporaryDirectory(prefix="oa-recall-bench-") as tmp:
        for store in stores:
            url = {"memory": "memory://", "redis": redis_url, "postgres": postgres_url}.get(store)
            for receivers in sorted({1, *receiver_counts}):
                app = create_extension(
                    store=url,
                    signed=True,
                    receivers=receivers,
                    instance_path=f"{tmp}/{store}-{receivers}",
                )
                counts = key_counts if receivers == 1 else (1,)
                for keys in counts:
                    requests = max(30, budget // keys) if keys > 1 else budget
                    us = time_requests(app, Traffic(keys=keys), requests=requests, repeats=repeats)
                    points.append(Point(store, keys, receivers, us))
                    progress(f"in-process {store}: {keys} keys, {receivers} receivers: {us:.1f} µs")
                app.extensions["oa_recall"].close()
    return points, floor_us


def per_extra_key(points: Sequence[Point], store: str) -> float | None:
    """µs per extra MsgKey: the slope between the fewest and the most keys (one receiver)."""
    line = sorted(
        (p.keys, p.us_per_request) for p in points if p.store == store and p.receivers == 1
    )
    if len(line) < 2 or line[-1][0] == line[0][0]:
        return None
    (k0, t0), (k1, t1) = line[0], line[-1]
    return (t1 - t0) / (k1 - k0)


def per_extra_receiver(points: Sequence[Point], store: str) -> float | None:
    """µs per extra connected receiver, one MsgKey: slope between the fewest and the most."""
    line = sorted(
        (p.receivers, p.us_per_request) for p in points if p.store == store and p.keys == 1
    )
    if len(line) < 2 or line[-1][0] == line[0][0]:
        return None
    (r0, t0), (r1, t1) = line[0], line[-1]
    return (t1 - t0) / (r1 - r0)
