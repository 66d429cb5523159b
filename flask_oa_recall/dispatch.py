"""Running the host app's receivers: each on its own, each outcome recorded."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blinker import Signal
from flask import Flask

from .events import Callback
from .kinds import Event, kind_of
from .signals import callback_received, receiver_failed
from .store import Claim, DeliveryStatus, Outcome
from .tracing import LOOK_UP, LookUp, use_tracer

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["dispatch", "receiver_name"]

logger = logging.getLogger(__name__)

_MAX_ERROR = 500


def receiver_name(receiver: Callable[..., Any]) -> str:
    """A receiver's stable dotted name, as kept in the store and shown by the CLI."""
    module = getattr(receiver, "__module__", None) or "?"
    qualname = getattr(receiver, "__qualname__", None) or type(receiver).__qualname__
    return f"{module}.{qualname}"


def _call(
    app: Flask, tracer: Tracer | None, receiver: Callable[..., Any], name: str, **kwargs: Any
) -> None:
    if inspect.iscoroutinefunction(receiver):
        receiver = app.ensure_sync(receiver)
    if tracer is None:
        receiver(app, **kwargs)
        return
    with tracer.start_as_current_span(
        "oa_recall.receiver", attributes={"oa_recall.receiver": name}
    ):
        receiver(app, **kwargs)


def _report(app: Flask, name: str, signal_name: str, exc: Exception, delivery_id: str) -> None:
    logger.error(
        "receiver %s of %s failed for delivery %s",
        name,
        signal_name,
        delivery_id,
        exc_info=exc,
        extra={"receiver": name, "signal": signal_name, "delivery_id": delivery_id},
    )
    try:
        receiver_failed.send(
            app,
            _async_wrapper=app.ensure_sync,
            receiver=name,
            signal_name=signal_name,
            exception=exc,
            delivery_id=delivery_id,
        )
    except Exception:
        logger.exception("a receiver of receiver_failed raised; ignored")


def named_receivers(
    signal: Signal, app: Flask, prefix: str
) -> list[tuple[str, Callable[..., Any]]]:
    """The receivers of ``signal`` for ``app``, each with the name its progress is kept under.

    Names must be unique, or one receiver's success would count for another: two receivers with
    the same dotted name (two ``functools.partial`` objects, closures from one factory) get
    ``#2``, ``#3``... in the order they were connected.
    """
    if not signal.receivers:
        return []
    named: list[tuple[str, Callable[..., Any]]] = []
    seen: dict[str, int] = {}
    for receiver in signal.receivers_for(app):
        name = prefix + receiver_name(receiver)
        seen[name] = count = seen.get(name, 0) + 1
        named.append((name if count == 1 else f"{name}#{count}", receiver))
    return named


def _failure_text(name: str, exc: Exception) -> str:
    return f"{name}: {type(exc).__name__}: {exc}"[:_MAX_ERROR]


@dataclass
class _Attempt:
    """What one dispatch attempt has done so far, and what it runs with."""

    delivery_id: str
    tracer: Tracer | None

    results: dict[str, str] = field(default_factory=dict)
    #: Each receiver that succeeded, with the keys it handled.
    handled: list[tuple[str, list[str]]] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    connected: set[str] = field(default_factory=set)
    first_error: str | None = None

    def failure(self, name: str, text: str) -> None:
        self.results[name] = "failed"
        self.first_error = self.first_error or text


def _per_delivery(
    app: Flask, claim: Claim, make_callback: Callable[[], Callback], attempt: _Attempt
) -> None:
    """``callback_received``: once per delivery and receiver (redeliveries included). The
    :class:`Callback` is built only when a receiver is connected."""
    receivers = named_receivers(callback_received, app, "callback_received:")
    if not receivers:
        return
    callback = make_callback()
    for name, receiver in receivers:
        attempt.connected.add(name)
        if name in claim.receivers_ok:
            continue
        try:
            _call(app, attempt.tracer, receiver, name, callback=callback)
        except Exception as exc:
            attempt.failure(name, _failure_text(name, exc))
            _report(app, name, "callback_received", exc, attempt.delivery_id)
        else:
            attempt.results[name] = "ok"


def _per_key(app: Flask, claim: Claim, event: Event, attempt: _Attempt) -> None:
    """The typed signal: each receiver gets the event narrowed to the keys it has not handled
    yet (a recall's messages; the one identity of the other events)."""
    kind = kind_of(event)
    receivers = named_receivers(kind.signal, app, f"{kind.signal_name}:")
    attempt.connected.update(name for name, _ in receivers)
    if not claim.owned:
        return
    all_keys = event.dedup_keys
    for name, receiver in receivers:
        keys = [k for k in all_keys if k in claim.owned and name not in claim.owned[k]]
        if not keys:
            continue
        given = event if len(keys) == len(all_keys) else event.only(set(keys))
        try:
            _call(app, attempt.tracer, receiver, name, event=given)
        except Exception as exc:
            attempt.failure(name, _failure_text(name, exc))
            attempt.failed.update(keys)
            _report(app, name, kind.signal_name, exc, attempt.delivery_id)
        else:
            attempt.results[name] = "ok"
            attempt.handled.append((name, keys))


def _succeeded(handled: list[tuple[str, list[str]]]) -> dict[str, frozenset[str]]:
    """Key to the receivers that succeeded for it. Keys with the same receivers share one set
    (the usual case: every receiver handled every key), which the stores encode once."""
    if len(handled) == 1:
        name, keys = handled[0]
        return dict.fromkeys(keys, frozenset((name,)))
    if not handled:
        return {}
    keys = handled[0][1]
    if all(other == keys for _, other in handled):
        return dict.fromkeys(keys, frozenset(name for name, _ in handled))
    per_key: dict[str, set[str]] = {}
    for name, handled_keys in handled:
        for key in handled_keys:
            per_key.setdefault(key, set()).add(name)
    shared: dict[frozenset[str], frozenset[str]] = {}
    return {
        key: shared.setdefault(frozenset(names), frozenset(names)) for key, names in per_key.items()
    }


def _missing(
    claim: Claim,
    event: Event | None,
    failed_before: frozenset[str],
    attempt: _Attempt,
) -> None:
    """A receiver that failed before and is not connected now counts as failed again, so that
    its messages are not finished without it."""
    for name in sorted(failed_before - attempt.connected):
        if not name.startswith("callback_received:"):
            if event is None:
                continue
            missed = [k for k, done in claim.owned.items() if name not in done]
            if not missed:
                continue  # every message it failed on was finished since
            attempt.failed.update(missed)
        attempt.failure(name, f"{name}: not connected in this process")
        logger.error(
            "receiver %s failed for delivery %s before and is not connected now; connect it"
            " and replay again",
            name,
            attempt.delivery_id,
        )


def _warn_if_slow(delivery_id: str, started: float, slow_seconds: float) -> None:
    elapsed = time.perf_counter() - started
    if elapsed > slow_seconds:
        logger.warning(
            "dispatch of delivery %s took %.3f s, more than %.3f s of Tencent's 2 s budget;"
            " consider OA_RECALL_DISPATCH='after_response' or handing work to a queue",
            delivery_id,
            elapsed,
            slow_seconds,
        )


def dispatch(
    app: Flask,
    claim: Claim,
    make_callback: Callable[[], Callback],
    event: Event | None,
    *,
    delivery_id: str,
    slow_seconds: float,
    failed_before: frozenset[str] = frozenset(),
    tracer: Tracer | LookUp | None = LOOK_UP,
) -> Outcome:
    """Send ``callback_received`` (with ``make_callback()``) and, for a typed event, its signal
    to each receiver.

    A receiver that already succeeded (per ``claim``) is skipped; one that raises is logged,
    reported through ``receiver_failed`` and recorded, and the others still run. A receiver in
    ``failed_before`` (a replay's earlier failures) that is not connected now counts as failed
    again, so that its messages are not finished without it.
    """
    started = time.perf_counter()
    attempt = _Attempt(delivery_id, use_tracer(app, tracer))
    _per_delivery(app, claim, make_callback, attempt)
    if event is not None:
        _per_key(app, claim, event, attempt)
    if failed_before:
        _missing(claim, event, failed_before, attempt)
    if attempt.first_error is not None:
        status = DeliveryStatus.FAILED
    elif event is not None and not claim.owned:
        status = DeliveryStatus.DUPLICATE
    else:
        status = DeliveryStatus.DONE
    _warn_if_slow(delivery_id, started, slow_seconds)
    return Outcome(
        status=status,
        receivers=attempt.results,
        succeeded=_succeeded(attempt.handled),
        failed=frozenset(attempt.failed),
        error=attempt.first_error,
    )
