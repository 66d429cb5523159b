"""Running the host app's receivers: each on its own, each outcome recorded."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from blinker import Signal
from flask import Flask

from .events import Callback, RecallEvent
from .signals import callback_received, messages_recalled, receiver_failed
from .store import Claim, DeliveryStatus, Outcome

__all__ = ["dispatch", "receiver_name"]

logger = logging.getLogger(__name__)

_MAX_ERROR = 500


def receiver_name(receiver: Callable[..., Any]) -> str:
    """A receiver's stable dotted name, as kept in the store and shown by the CLI."""
    module = getattr(receiver, "__module__", None) or "?"
    qualname = getattr(receiver, "__qualname__", None) or type(receiver).__qualname__
    return f"{module}.{qualname}"


def _call(app: Flask, receiver: Callable[..., Any], **kwargs: Any) -> None:
    if inspect.iscoroutinefunction(receiver):
        receiver = app.ensure_sync(receiver)
    receiver(app, **kwargs)


def _report(app: Flask, name: str, signal_name: str, exc: Exception, delivery_id: str) -> None:
    logger.error(
        "receiver %s of %s failed for delivery %s",
        name,
        signal_name,
        delivery_id,
        exc_info=exc,
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


def dispatch(
    app: Flask,
    claim: Claim,
    callback: Callback,
    event: RecallEvent | None,
    *,
    slow_seconds: float,
    failed_before: frozenset[str] = frozenset(),
) -> Outcome:
    """Send ``callback_received`` and, for a recall, ``messages_recalled`` to each receiver.

    A receiver that already succeeded (per ``claim``) is skipped; one that raises is logged,
    reported through ``receiver_failed`` and recorded, and the others still run. A receiver in
    ``failed_before`` (a replay's earlier failures) that is not connected now counts as failed
    again, so that its messages are not finished without it.
    """
    started = time.perf_counter()
    results: dict[str, str] = {}
    succeeded: dict[str, set[str]] = {}
    failed: set[str] = set()
    first_error: str | None = None

    connected: set[str] = set()
    for name, receiver in named_receivers(callback_received, app, "callback_received:"):
        connected.add(name)
        if name in claim.receivers_ok:
            continue
        try:
            _call(app, receiver, callback=callback)
        except Exception as exc:
            results[name] = "failed"
            first_error = first_error or f"{name}: {type(exc).__name__}: {exc}"[:_MAX_ERROR]
            _report(app, name, "callback_received", exc, callback.delivery_id)
        else:
            results[name] = "ok"

    recall_receivers = (
        named_receivers(messages_recalled, app, "messages_recalled:") if event is not None else []
    )
    connected.update(name for name, _ in recall_receivers)
    if event is not None and claim.owned:
        for name, receiver in recall_receivers:
            keys = [k for k in event.msg_keys if k in claim.owned and name not in claim.owned[k]]
            if not keys:
                continue
            given = event if len(keys) == len(event.messages) else event.only(set(keys))
            try:
                _call(app, receiver, event=given)
            except Exception as exc:
                results[name] = "failed"
                failed.update(keys)
                first_error = first_error or f"{name}: {type(exc).__name__}: {exc}"[:_MAX_ERROR]
                _report(app, name, "messages_recalled", exc, callback.delivery_id)
            else:
                results[name] = "ok"
                for key in keys:
                    succeeded.setdefault(key, set()).add(name)

    for name in sorted(failed_before - connected):
        if name.startswith("messages_recalled:"):
            if event is None:
                continue
            missed = [k for k, done in claim.owned.items() if name not in done]
            if not missed:
                continue  # every message it failed on was finished since
            failed.update(missed)
        results[name] = "failed"
        first_error = first_error or f"{name}: not connected in this process"
        logger.error(
            "receiver %s failed for delivery %s before and is not connected now; connect it"
            " and replay again",
            name,
            callback.delivery_id,
        )

    if first_error is not None:
        status = DeliveryStatus.FAILED
    elif event is not None and not claim.owned:
        status = DeliveryStatus.DUPLICATE
    else:
        status = DeliveryStatus.DONE
    elapsed = time.perf_counter() - started
    if elapsed > slow_seconds:
        logger.warning(
            "dispatch of delivery %s took %.3f s, more than %.3f s of Tencent's 2 s budget;"
            " consider OA_RECALL_DISPATCH='after_response' or handing work to a queue",
            callback.delivery_id,
            elapsed,
            slow_seconds,
        )
    return Outcome(
        status=status,
        receivers=results,
        succeeded={k: frozenset(v) for k, v in succeeded.items()},
        failed=frozenset(failed),
        error=first_error,
    )
