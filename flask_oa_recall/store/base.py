"""The store protocol: what every backend keeps, and the records it hands back.

A *delivery* is one accepted request. A *message* is one recalled MsgKey, identified by
(SdkAppid, Official_Account, MsgKey); its state makes dispatch exactly-once per receiver:

- ``begin`` keeps the delivery (status ``pending``) and, in the same atomic step, claims each of
  its messages that is neither finished nor leased by another delivery;
- ``finish`` records which receivers succeeded for which messages, marks a message finished when
  none failed for it, and releases the claims;
- a claim held by a worker that died runs out after the lease, so ``resume`` (replay) can take it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import DeliveryBusy, LayoutError, UnknownDelivery

__all__ = [
    "Claim",
    "Delivery",
    "DeliveryBusy",
    "DeliveryStatus",
    "NewDelivery",
    "Outcome",
    "Store",
    "UnknownDelivery",
    "newer_layout",
]


class DeliveryStatus:
    """The values of :attr:`Delivery.status`."""

    PENDING = "pending"
    """Kept, dispatch not finished (in flight, or interrupted if its lease ran out)."""
    DONE = "done"
    """Every receiver succeeded."""
    FAILED = "failed"
    """At least one receiver raised; ``replay`` runs those again."""
    DUPLICATE = "duplicate"
    """Every message in it had already been dispatched, or is being dispatched elsewhere."""


@dataclass(frozen=True)
class NewDelivery:
    """What the view keeps before any receiver runs."""

    id: str
    received_at: float
    sdk_app_id: int
    command: str
    query: Mapping[str, str]
    body: str
    official_account: str | None = None
    msg_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delivery(NewDelivery):
    """A kept delivery, as read back from the store."""

    status: str = DeliveryStatus.PENDING
    attempts: int = 1
    receivers: Mapping[str, str] = field(default_factory=dict)
    last_error: str | None = None
    updated_at: float = 0.0
    lease_until: float = 0.0


@dataclass(frozen=True)
class Claim:
    """What ``begin``/``resume`` granted.

    :param owned: the messages this delivery now dispatches, each with the receivers that
        already succeeded for it (in an earlier attempt or delivery).
    :param done: messages already finished by some delivery.
    :param busy: messages leased by another delivery right now.
    :param receivers_ok: per-delivery receivers (of ``callback_received``) that already
        succeeded in an earlier attempt.
    :param scope: the delivery's (SdkAppid, Official_Account or ``""``), set by stores that
        use it in ``finish`` to find the messages without reading the delivery first; stores
        must work without it (``None``).
    """

    owned: Mapping[str, frozenset[str]] = field(default_factory=dict)
    done: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()
    receivers_ok: frozenset[str] = frozenset()
    scope: tuple[int, str] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Outcome:
    """What one dispatch attempt did, for ``finish``.

    :param status: the delivery's new status.
    :param receivers: receiver name to ``"ok"`` or ``"failed"``, for the receivers that ran.
    :param succeeded: message to the receivers that succeeded for it in this attempt.
    :param failed: messages for which some receiver failed (they stay unfinished).
    :param error: a short, secret-free description of the first failure.
    """

    status: str
    receivers: Mapping[str, str] = field(default_factory=dict)
    succeeded: Mapping[str, frozenset[str]] = field(default_factory=dict)
    failed: frozenset[str] = frozenset()
    error: str | None = None


@runtime_checkable
class Store(Protocol):
    """Where deliveries are kept. Every method may raise :class:`~flask_oa_recall.StoreError`."""

    url: str

    layout_version: int
    """The layout (tables, keys) this code reads and writes: a class attribute, 1 for 0.1.0's
    layout. Each store records the version it holds; opening a store that holds an older one
    migrates it in one atomic step or raises :class:`~flask_oa_recall.LayoutError`
    naming the command to run, and a newer one raises ``LayoutError``."""

    def stored_layout_version(self) -> int | None:
        """The layout version the store records now (``None``: nothing kept there yet).

        Reads only; raises :class:`~flask_oa_recall.StoreError` if the store cannot be read.
        """

    def begin(self, delivery: NewDelivery, lease_seconds: float) -> Claim:
        """Keep ``delivery`` as pending and claim its messages, atomically."""

    def resume(self, delivery_id: str, lease_seconds: float) -> tuple[Delivery, Claim]:
        """Lease a kept delivery again for a replay: count the attempt, re-claim its messages.

        :raises ~flask_oa_recall.UnknownDelivery: if no such delivery is kept (a
            :class:`KeyError` too).
        :raises ~flask_oa_recall.DeliveryBusy: if a live worker holds it.
        """

    def finish(self, delivery_id: str, claim: Claim, outcome: Outcome) -> None:
        """Record ``outcome`` and release the claims."""

    def get(self, delivery_id: str) -> Delivery | None:
        """One delivery, or ``None``."""

    def deliveries(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Kept deliveries, newest first, optionally only those with one of ``statuses``."""

    def prune(self, *, before: float, include_failed: bool = False) -> int:
        """Drop finished deliveries received before ``before``; return how many."""

    def ping(self) -> None:
        """Raise :class:`~flask_oa_recall.StoreError` unless the store can be read and written."""

    def close(self) -> None:
        """Release connections."""


def newer_layout(where: str, found: int, supported: int) -> LayoutError:
    """The error for a store whose layout was written by a newer version of the package."""
    return LayoutError(
        f"{where} holds layout version {found}; this version of flask-oa-recall reads layout"
        f" version {supported} at most. Upgrade flask-oa-recall on this host"
        " (pip install -U flask-oa-recall) instead of pointing an older version at it."
    )
