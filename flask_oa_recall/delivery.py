"""Keep a delivery, dispatch it, record the outcome: for live requests and for replays."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask

from .dispatch import dispatch
from .errors import StoreError
from .events import Callback
from .kinds import KINDS, Event
from .parsing import build_callback, parse_body
from .security import canonical_query
from .signals import store_failed
from .store import Claim, Delivery, NewDelivery, Outcome, Store
from .tracing import LOOK_UP, LookUp, use_tracer

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["Prepared", "finish", "new_delivery_id", "prepare_replay", "run", "start"]

logger = logging.getLogger(__name__)


def new_delivery_id(now: float) -> str:
    """A unique id that sorts by arrival: milliseconds in hex, then randomness."""
    return f"{int(now * 1000):012x}{secrets.token_hex(6)}"


@dataclass(slots=True)
class Prepared:
    """A delivery ready to dispatch: what is kept, what is claimed, what receivers get."""

    delivery: NewDelivery
    claim: Claim
    kept: bool
    event: Event | None
    body: Mapping[str, Any]
    query: Mapping[str, str]
    attempt: int = 1


def _store_failed(app: Flask, err: Exception, delivery_id: str, what: str) -> None:
    logger.error(
        "delivery %s could not be %s: %s",
        delivery_id,
        what,
        err,
        exc_info=err,
        extra={"delivery_id": delivery_id},
    )
    try:
        store_failed.send(
            app, _async_wrapper=app.ensure_sync, exception=err, delivery_id=delivery_id
        )
    except Exception:
        logger.exception("a receiver of store_failed raised; ignored")


def start(
    app: Flask,
    store: Store | None,
    delivery: NewDelivery,
    event: Event | None,
    body: Mapping[str, Any],
    query: Mapping[str, str],
    lease_seconds: float,
    *,
    tracer: Tracer | LookUp | None = LOOK_UP,
) -> Prepared:
    """Keep ``delivery`` and claim its messages. If the store fails, claim everything so the
    receivers still run (dedup is lost, the recall is not).

    With no ``store`` (the keep policy leaves this command out) nothing is written: every
    message is claimed, as if the store had failed.
    """
    if store is None:
        return Prepared(delivery, _claim_all(delivery), False, event, body, query)
    tracer = use_tracer(app, tracer)
    try:
        if tracer is None:
            claim = store.begin(delivery, lease_seconds)
        else:
            with tracer.start_as_current_span("oa_recall.keep"):
                claim = store.begin(delivery, lease_seconds)
        kept = True
    except StoreError as err:
        _store_failed(app, err, delivery.id, "kept")
        claim = _claim_all(delivery)
        kept = False
    return Prepared(delivery, claim, kept, event, body, query)


def _claim_all(delivery: NewDelivery) -> Claim:
    return Claim(owned=dict.fromkeys(delivery.msg_keys, frozenset()))


def run(
    app: Flask,
    store: Store | None,
    prepared: Prepared,
    slow_seconds: float,
    *,
    soon: bool = False,
    tracer: Tracer | LookUp | None = LOOK_UP,
) -> Outcome:
    """Dispatch a prepared delivery and record the outcome (``soon``: see :func:`finish`)."""
    d = prepared.delivery

    def make_callback() -> Callback:
        return build_callback(
            d.command,
            prepared.body,
            prepared.query,
            d.sdk_app_id,
            d.id,
            d.received_at,
            prepared.attempt,
        )

    receivers = d.receivers if isinstance(d, Delivery) else None
    failed_before = (
        frozenset(name for name, result in receivers.items() if result == "failed")
        if receivers
        else frozenset()
    )
    outcome = dispatch(
        app,
        prepared.claim,
        make_callback,
        prepared.event,
        delivery_id=d.id,
        slow_seconds=slow_seconds,
        failed_before=failed_before,
        tracer=use_tracer(app, tracer),
    )
    if prepared.kept and store is not None:
        finish(app, store, d.id, prepared.claim, outcome, soon=soon)
    return outcome


def finish(
    app: Flask,
    store: Store,
    delivery_id: str,
    claim: Claim,
    outcome: Outcome,
    *,
    soon: bool = False,
) -> None:
    """Record ``outcome``; a store failure leaves the delivery pending, for ``replay``.

    With ``soon`` (a live callback), a store that can (SQLite) records it with its next write
    instead of at once; a failure to record it then is reported the same way, a little later.
    """
    finish_soon = getattr(store, "finish_soon", None) if soon else None
    try:
        if finish_soon is None:
            store.finish(delivery_id, claim, outcome)
        else:
            finish_soon(delivery_id, claim, outcome, _reporter(app, delivery_id))
    except StoreError as err:
        _store_failed(app, err, delivery_id, _NOT_FINISHED)


#: How the log and ``store_failed`` describe an outcome that could not be recorded.
_NOT_FINISHED = "marked finished; it stays pending"


def _reporter(app: Flask, delivery_id: str) -> Callable[[StoreError], None]:
    def report(err: StoreError) -> None:
        with app.app_context():
            _store_failed(app, err, delivery_id, _NOT_FINISHED)

    return report


def prepare_replay(store: Store, delivery_id: str, lease_seconds: float) -> Prepared:
    """Lease a kept delivery again and rebuild what its receivers get."""
    kept, claim = store.resume(delivery_id, lease_seconds)
    return _rebuild(kept, claim)


def _rebuild(kept: Delivery, claim: Claim) -> Prepared:
    body = parse_body(kept.body.encode("utf-8"))
    event = None
    kind = KINDS.get(kept.command)
    # Only a delivery kept with dedup keys was typed when it arrived (a typed command that only
    # callback_received listened to is kept without them): its replay is typed the same way.
    if kind is not None and kept.msg_keys:
        canonical = canonical_query(kept.query.items())
        event = kind.load(body, canonical, kept.sdk_app_id, kept.id)
    return Prepared(kept, claim, True, event, body, kept.query, attempt=kept.attempts)
