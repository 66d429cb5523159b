"""``memory://``: deliveries kept in this process only. For tests and local experiments."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import MISSING, fields
from typing import Any

from ..errors import StoreError, UnknownDelivery
from .base import Claim, Delivery, DeliveryBusy, DeliveryStatus, NewDelivery, Outcome
from .logic import MessageState, merge_receivers, release, try_claim

__all__ = ["MemoryStore"]

MessageId = tuple[int, str, str]


def _kept(delivery: NewDelivery, now: float, lease_seconds: float) -> Delivery:
    """``delivery`` as kept: pending, leased."""
    kept = Delivery.__new__(Delivery)
    kept.__dict__.update(_PENDING_DEFAULTS, **vars(delivery))
    kept.__dict__.update(updated_at=now, lease_until=now + lease_seconds, receivers={})
    return kept


def _changed(kept: Delivery, **changes: Any) -> Delivery:
    """A copy of ``kept`` with ``changes``: what ``dataclasses.replace`` gives, without running
    ``__init__`` again (the values were checked when the delivery was kept)."""
    copy = Delivery.__new__(Delivery)
    copy.__dict__.update(vars(kept), **changes)
    return copy


#: A new delivery's fields beyond :class:`NewDelivery`'s with plain defaults (``receivers``,
#: a new dict each time, is set by :func:`_kept`).
_PENDING_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in fields(Delivery)
    if f.name not in {g.name for g in fields(NewDelivery)} and f.default is not MISSING
}


class MemoryStore:
    """A thread-safe in-process store. Each gunicorn worker would have its own: tests only.

    Its memory is bounded: it keeps every pending and failed delivery, but only the
    ``max_finished_deliveries`` most recently finished (done or duplicate) deliveries and the
    ``max_finished_messages`` most recently finished messages; older ones are forgotten as if
    pruned, so a redelivery of a forgotten message is dispatched again.
    """

    layout_version = 1
    #: Finished deliveries kept (the oldest are forgotten first).
    MAX_FINISHED_DELIVERIES = 1_000
    #: Finished messages kept for deduplication (the oldest are forgotten first).
    MAX_FINISHED_MESSAGES = 10_000

    def __init__(
        self,
        url: str = "memory://",
        *,
        max_finished_deliveries: int = MAX_FINISHED_DELIVERIES,
        max_finished_messages: int = MAX_FINISHED_MESSAGES,
    ) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._deliveries: dict[str, Delivery] = {}
        self._messages: dict[MessageId, MessageState] = {}
        # Both in the order they finished, oldest first: what to forget first. OrderedDicts:
        # a plain dict finds its first key again by skipping the slots of every key deleted
        # before it, so forgetting the oldest one by one would cost more with each callback.
        self._finished_at: OrderedDict[MessageId, float] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._max_deliveries = max_finished_deliveries
        self._max_messages = max_finished_messages

    def _claim(self, delivery: Delivery, now: float, lease_seconds: float) -> Claim:
        owned: dict[str, frozenset[str]] = {}
        done: list[str] = []
        busy: list[str] = []
        oa = delivery.official_account or ""
        for key in delivery.msg_keys:
            state = self._messages.setdefault((delivery.sdk_app_id, oa, key), MessageState())
            verdict = try_claim(state, delivery.id, now, lease_seconds)
            if verdict == "owned":
                owned[key] = frozenset(state.receivers_done)
            else:
                (done if verdict == "done" else busy).append(key)
        ok = frozenset(n for n, r in delivery.receivers.items() if r == "ok")
        return Claim(owned=owned, done=tuple(done), busy=tuple(busy), receivers_ok=ok)

    def begin(self, delivery: NewDelivery, lease_seconds: float) -> Claim:
        """Keep ``delivery`` and claim its messages."""
        now = time.time()
        kept = _kept(delivery, now, lease_seconds)
        with self._lock:
            if kept.id in self._deliveries:
                raise StoreError(f"delivery {kept.id} is already kept")
            self._deliveries[kept.id] = kept
            return self._claim(kept, now, lease_seconds)

    def resume(self, delivery_id: str, lease_seconds: float) -> tuple[Delivery, Claim]:
        """Lease ``delivery_id`` again for a replay."""
        now = time.time()
        with self._lock:
            kept = self._deliveries.get(delivery_id)
            if kept is None:
                raise UnknownDelivery(delivery_id)
            if kept.status == DeliveryStatus.PENDING and kept.lease_until > now:
                raise DeliveryBusy(delivery_id)
            kept = _changed(
                kept,
                status=DeliveryStatus.PENDING,
                attempts=kept.attempts + 1,
                updated_at=now,
                lease_until=now + lease_seconds,
            )
            self._deliveries[delivery_id] = kept
            self._finished.pop(delivery_id, None)
            return kept, self._claim(kept, now, lease_seconds)

    def finish(self, delivery_id: str, claim: Claim, outcome: Outcome) -> None:
        """Record ``outcome`` and release the claims."""
        now = time.time()
        with self._lock:
            kept = self._deliveries.get(delivery_id)
            if kept is None:
                raise StoreError(f"delivery {delivery_id} vanished from the store")
            oa = kept.official_account or ""
            for key in claim.owned:
                message = (kept.sdk_app_id, oa, key)
                state = self._messages.setdefault(message, MessageState())
                release(
                    state,
                    delivery_id,
                    outcome.succeeded.get(key, frozenset()),
                    key in outcome.failed,
                )
                if state.done:
                    self._finished_at.pop(message, None)
                    self._finished_at[message] = now
            while len(self._finished_at) > self._max_messages:
                forgotten, _ = self._finished_at.popitem(last=False)
                self._messages.pop(forgotten, None)
            self._finished.pop(delivery_id, None)
            if outcome.status in (DeliveryStatus.DONE, DeliveryStatus.DUPLICATE):
                self._finished[delivery_id] = None
                while len(self._finished) > self._max_deliveries:
                    forgotten_id, _ = self._finished.popitem(last=False)
                    self._deliveries.pop(forgotten_id, None)
            self._deliveries[delivery_id] = _changed(
                kept,
                status=outcome.status,
                receivers=(
                    merge_receivers(dict(kept.receivers), dict(outcome.receivers))
                    if kept.receivers
                    else dict(outcome.receivers)
                ),
                last_error=outcome.error,
                updated_at=now,
                lease_until=0.0,
            )

    def get(self, delivery_id: str) -> Delivery | None:
        """One delivery, or ``None``."""
        with self._lock:
            return self._deliveries.get(delivery_id)

    def deliveries(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Kept deliveries, newest first."""
        with self._lock:
            found = [d for d in self._deliveries.values() if not statuses or d.status in statuses]
        found.sort(key=lambda d: d.received_at, reverse=True)
        return found[:limit]

    def prune(self, *, before: float, include_failed: bool = False) -> int:
        """Drop finished deliveries received before ``before``, and finished message states."""
        finished = {DeliveryStatus.DONE, DeliveryStatus.DUPLICATE}
        if include_failed:
            finished.add(DeliveryStatus.FAILED)
        with self._lock:
            doomed = [
                d.id
                for d in self._deliveries.values()
                if d.received_at < before and d.status in finished
            ]
            for delivery_id in doomed:
                del self._deliveries[delivery_id]
                self._finished.pop(delivery_id, None)
            for message in [m for m, at in self._finished_at.items() if at < before]:
                del self._finished_at[message]
                del self._messages[message]
        return len(doomed)

    def stored_layout_version(self) -> int:
        """Always this code's: nothing outlives the process."""
        return self.layout_version

    def ping(self) -> None:
        """Always reachable."""

    def close(self) -> None:
        """Nothing to release."""
