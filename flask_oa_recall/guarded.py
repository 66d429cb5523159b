"""A store watched for forgetting, and optionally backed by this host's journal.

:class:`GuardedStore` wraps the store ``OA_RECALL_STORE`` opened, when that store can hold a
marker (Redis) or ``OA_RECALL_JOURNAL`` is on. It behaves as the store it wraps, plus:

- now and then (:data:`~flask_oa_recall.durability.FORGET_CHECK_SECONDS`) it looks at the
  store's marker before keeping a delivery, to notice a store that forgot;
- with a journal, each delivery is journalled before the store keeps it and dropped from the
  journal once the store has it finished; :meth:`GuardedStore.restore` brings back into the
  store what it lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from .durability import ForgetWatch
from .errors import StoreError
from .journal import Journal
from .store import Claim, Delivery, DeliveryStatus, NewDelivery, Outcome, Store

__all__ = ["RESTORED_ERROR", "GuardedStore", "Restored", "unwrap"]

logger = logging.getLogger(__name__)

#: ``last_error`` of a delivery brought back from the journal.
RESTORED_ERROR = "the store had lost this delivery; brought back from the host's journal"

_FINISHED = (DeliveryStatus.DONE, DeliveryStatus.DUPLICATE)


@dataclass(frozen=True)
class Restored:
    """What :meth:`GuardedStore.restore` did.

    :param brought_back: ids of deliveries the store had lost, now kept there again as failed.
    :param dropped: journal entries the store had finished, removed from the journal.
    :param in_flight: pending entries younger than the lease, left alone (a worker may hold
        them right now).
    """

    brought_back: list[str] = field(default_factory=list)
    dropped: int = 0
    in_flight: int = 0


class GuardedStore:
    """``store`` with a :class:`ForgetWatch` and/or a :class:`Journal`; see the module."""

    def __init__(
        self, store: Store, *, watch: ForgetWatch | None = None, journal: Journal | None = None
    ) -> None:
        self.inner = store
        self.url = store.url
        #: The wrapped store's layout version (read it on the instance, not on the class).
        self.layout_version = store.layout_version
        self.watch = watch
        self.journal = journal

    def __repr__(self) -> str:
        return f"<GuardedStore {self.inner!r} journal={self.journal and self.journal.path!r}>"

    def __getattr__(self, name: str) -> Any:
        # Whatever else the wrapped store offers stays reachable.
        return getattr(self.inner, name)

    def stored_layout_version(self) -> int | None:
        """See :meth:`Store.stored_layout_version`."""
        return self.inner.stored_layout_version()

    def _journal(self, what: str, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except StoreError as err:
            logger.error("the journal could not %s: %s", what, err)

    def begin(self, delivery: NewDelivery, lease_seconds: float) -> Claim:
        """Journal ``delivery``, then keep it in the store (see :meth:`Store.begin`)."""
        if self.watch is not None:
            self.watch.poll()
        if self.journal is not None:
            self._journal(f"keep delivery {delivery.id}", self.journal.add, delivery)
        try:
            return self.inner.begin(delivery, lease_seconds)
        except StoreError:
            if self.journal is not None:  # not kept: dispatched without dedup, as without one
                self._journal(f"drop delivery {delivery.id}", self.journal.drop, delivery.id)
            raise

    def finish(self, delivery_id: str, claim: Claim, outcome: Outcome) -> None:
        """Record ``outcome`` in the store; then drop the journal entry, or mark it failed.

        If the store cannot record it, the entry stays (pending) for :meth:`restore`.
        """
        self.inner.finish(delivery_id, claim, outcome)
        self._finished(delivery_id, outcome)

    def finish_soon(
        self,
        delivery_id: str,
        claim: Claim,
        outcome: Outcome,
        on_failure: Callable[[StoreError], None] | None = None,
    ) -> None:
        """The wrapped store's ``finish_soon`` where it has one (else :meth:`finish`); the
        journal entry is let go as soon as the store holds the outcome."""
        inner = getattr(self.inner, "finish_soon", None)
        if inner is None:
            self.finish(delivery_id, claim, outcome)
            return
        inner(delivery_id, claim, outcome, on_failure)
        self._finished(delivery_id, outcome)

    def _finished(self, delivery_id: str, outcome: Outcome) -> None:
        if self.journal is not None:
            if outcome.status in _FINISHED:
                self._journal(f"drop delivery {delivery_id}", self.journal.drop, delivery_id)
            else:
                self._journal(
                    f"mark delivery {delivery_id} failed",
                    self.journal.fail,
                    delivery_id,
                    outcome.error,
                )

    def resume(self, delivery_id: str, lease_seconds: float) -> tuple[Delivery, Claim]:
        """See :meth:`Store.resume`."""
        return self.inner.resume(delivery_id, lease_seconds)

    def get(self, delivery_id: str) -> Delivery | None:
        """See :meth:`Store.get`."""
        return self.inner.get(delivery_id)

    def deliveries(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[Delivery]:
        """See :meth:`Store.deliveries`."""
        return self.inner.deliveries(statuses=statuses, limit=limit)

    def prune(self, *, before: float, include_failed: bool = False) -> int:
        """See :meth:`Store.prune`."""
        return self.inner.prune(before=before, include_failed=include_failed)

    def ping(self) -> None:
        """See :meth:`Store.ping`."""
        self.inner.ping()

    def close(self) -> None:
        """Close the store's connections and this thread's journal connection."""
        self.inner.close()
        if self.journal is not None:
            self.journal.close()

    def restore(self, lease_seconds: float) -> Restored:
        """Keep again, as failed, every journalled delivery the store no longer has.

        Entries the store has finished are dropped; pending entries younger than
        ``lease_seconds`` are left alone (a live worker may be dispatching them). Raises
        :class:`StoreError` if the store or the journal cannot be read.
        """
        if self.journal is None:
            return Restored()
        brought_back: list[str] = []
        dropped = in_flight = 0
        now = time.time()
        for entry in self.journal.entries():
            delivery_id = entry.delivery.id
            kept = self.inner.get(delivery_id)
            if kept is not None:
                if kept.status in _FINISHED:
                    self.journal.drop(delivery_id)
                    dropped += 1
                continue
            if entry.state == DeliveryStatus.PENDING and entry.journalled_at + lease_seconds > now:
                in_flight += 1
                continue
            claim = self.inner.begin(entry.delivery, lease_seconds)
            self.inner.finish(
                delivery_id,
                claim,
                Outcome(
                    status=DeliveryStatus.FAILED,
                    failed=frozenset(claim.owned),
                    error=RESTORED_ERROR,
                ),
            )
            self.journal.fail(delivery_id, RESTORED_ERROR)
            brought_back.append(delivery_id)
        if brought_back:
            logger.warning(
                "brought back %d deliveries from the journal %s that the store %s had lost;"
                " 'flask oa-recall replay --failed' dispatches them",
                len(brought_back),
                self.journal.path,
                self.url,
            )
        return Restored(brought_back, dropped, in_flight)


def unwrap(store: Store) -> Store:
    """The store itself, without a :class:`GuardedStore` around it."""
    return store.inner if isinstance(store, GuardedStore) else store
