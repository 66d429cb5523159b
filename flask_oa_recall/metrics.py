"""Prometheus metrics (the ``metrics`` extra), switched on with ``OA_RECALL_METRICS = True``.

The metrics live in prometheus_client's default registry, created once per process. Under
gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode): the counters and histograms of every worker are written there and summed
when scraped. The number of deliveries waiting for a replay is read from the store at scrape
time, by whichever process answers the scrape, so it needs no multiprocess gauge mode.

Expose them with :func:`metrics_response` from a Flask route, or with
:func:`collector_registry` and ``prometheus_client.make_wsgi_app``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from flask import Flask, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .errors import StoreError
from .signals import callback_rejected, receiver_failed, store_failed
from .store import DeliveryStatus, Store


class HasStores(Protocol):
    """What the store gauge needs of an app's state: the stores it opened."""

    def open_stores(self) -> list[Store]:
        """The stores opened so far."""


__all__ = [
    "DISPATCH_BUCKETS",
    "Metrics",
    "WaitingDeliveriesCollector",
    "collector_registry",
    "get_metrics",
    "install",
    "metrics_response",
]

#: Dispatch duration buckets in seconds, around Tencent's 2 s budget.
DISPATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

#: At most this many waiting deliveries are counted per scrape; more shows as this many.
WAITING_LIMIT = 10_000


class Metrics:
    """The package's metrics, all named ``oa_recall_*``."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.callbacks = Counter(
            "oa_recall_callbacks",
            "Accepted callbacks, by command and outcome (done, failed, duplicate, not_kept,"
            " acknowledged, decided).",
            ["command", "outcome"],
            registry=registry,
        )
        self.rejections = Counter(
            "oa_recall_rejections",
            "Refused requests, by reason (bad_signature, unknown_sdkappid, ...).",
            ["reason"],
            registry=registry,
        )
        self.dispatch_seconds = Histogram(
            "oa_recall_dispatch_seconds",
            "Time from the verified request to the receivers' end (keep, dispatch, record).",
            ["command"],
            buckets=DISPATCH_BUCKETS,
            registry=registry,
        )
        self.receiver_failures = Counter(
            "oa_recall_receiver_failures",
            "Receivers that raised, by receiver name.",
            ["receiver"],
            registry=registry,
        )
        self.store_errors = Counter(
            "oa_recall_store_errors",
            "Deliveries the store could not keep or mark finished.",
            registry=registry,
        )
        self.decisions = Counter(
            "oa_recall_decisions",
            "Answers to before-callbacks, by command and result (allow, deny, drop, fallback).",
            ["command", "result"],
            registry=registry,
        )

    def decided(self, command: str, kind: str, failure: Exception | None) -> None:
        """Count one before-callback's answer: its decision's kind, or ``fallback``."""
        self.decisions.labels(command, "fallback" if failure is not None else kind).inc()

    def observe(self, command: str, outcome: str, received_at: float | None) -> None:
        """Count one accepted callback and, given ``received_at`` (``time.time()`` once it was
        verified), how long it took to keep it, dispatch it and record the outcome."""
        self.callbacks.labels(command, outcome).inc()
        if received_at is not None:
            self.dispatch_seconds.labels(command).observe(max(0.0, time.time() - received_at))


_metrics: Metrics | None = None
_lock = threading.Lock()


def get_metrics() -> Metrics:
    """This process's metrics in the default registry, created on first use."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def _on_rejected(sender: Flask, reason: str, **_: Any) -> None:
    get_metrics().rejections.labels(reason).inc()


def _on_receiver_failed(sender: Flask, receiver: str, **_: Any) -> None:
    get_metrics().receiver_failures.labels(receiver).inc()


def _on_store_failed(sender: Flask, **_: Any) -> None:
    get_metrics().store_errors.inc()


class WaitingDeliveriesCollector(Collector):
    """``oa_recall_deliveries_waiting{status}``: failed and interrupted deliveries, read from
    the store of each app when scraped (one series per store)."""

    def __init__(self) -> None:
        self._states: weakref.WeakSet[HasStores] = weakref.WeakSet()

    def add(self, state: HasStores) -> None:
        """Count the deliveries of ``state``'s store too."""
        self._states.add(state)

    def describe(self) -> Iterable[Metric]:
        """Nothing: the store is read only when scraped, not at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Count failed and interrupted (pending, lease run out) deliveries per store."""
        family = GaugeMetricFamily(
            "oa_recall_deliveries_waiting",
            "Failed and interrupted deliveries waiting for 'flask oa-recall replay'.",
            labels=["status"],
        )
        counts = {"failed": 0, "interrupted": 0}
        seen: set[str] = set()
        for state in list(self._states):
            for store in state.open_stores():
                if store.url in seen:
                    continue
                seen.add(store.url)
                try:
                    found = store.deliveries(
                        statuses=[DeliveryStatus.FAILED, DeliveryStatus.PENDING],
                        limit=WAITING_LIMIT,
                    )
                except StoreError:
                    get_metrics().store_errors.inc()
                    continue
                now = time.time()
                for delivery in found:
                    if delivery.status == DeliveryStatus.FAILED:
                        counts["failed"] += 1
                    elif delivery.lease_until <= now:
                        counts["interrupted"] += 1
        for status, count in counts.items():
            family.add_metric([status], count)
        yield family


_waiting = WaitingDeliveriesCollector()
_waiting_registered = False


def install(app: Flask, state: HasStores) -> None:
    """Count ``app``'s callbacks: connect the signal receivers, register the store gauge."""
    global _waiting_registered
    get_metrics()
    callback_rejected.connect(_on_rejected, app, weak=False)
    receiver_failed.connect(_on_receiver_failed, app, weak=False)
    store_failed.connect(_on_store_failed, app, weak=False)
    _waiting.add(state)
    with _lock:
        if not _waiting_registered:
            REGISTRY.register(_waiting)
            _waiting_registered = True


def collector_registry() -> CollectorRegistry:
    """The registry to expose: the default one, or, in multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR`` set), one that sums every worker's files, plus the store
    gauge.

    ::

        from werkzeug.middleware.dispatcher import DispatcherMiddleware
        from prometheus_client import make_wsgi_app

        app.wsgi_app = DispatcherMiddleware(
            app.wsgi_app, {"/metrics": make_wsgi_app(collector_registry())}
        )
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_waiting)
    return registry


def metrics_response() -> Response:
    """A Flask response with the metrics in Prometheus' text format::

    @app.get("/metrics")
    def metrics():
        return metrics_response()
    """
    return Response(generate_latest(collector_registry()), content_type=CONTENT_TYPE_LATEST)
