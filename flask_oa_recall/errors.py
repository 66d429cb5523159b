"""Exceptions raised by the extension."""

from __future__ import annotations

from .responses import REJECTIONS, Rejection

__all__ = [
    "CallbackRejected",
    "DecidersBusy",
    "DecisionTimeout",
    "LayoutError",
    "OARecallError",
    "StoreError",
]


class OARecallError(Exception):
    """Base class of the errors this package raises on purpose."""


class CallbackRejected(OARecallError):
    """A request was refused; the view turns this into the ``FAIL`` envelope.

    :param reason: a key of :data:`~flask_oa_recall.responses.REJECTIONS`.
    :param info: a specific ``ErrorInfo``; it must never contain a token or a Sign.
    """

    def __init__(self, reason: str, info: str | None = None) -> None:
        self.rejection: Rejection = REJECTIONS[reason]
        self.reason = reason
        self.info = info or self.rejection.info
        super().__init__(f"{reason}: {self.info}")


class StoreError(OARecallError):
    """The delivery store could not be read or written."""


class LayoutError(StoreError):
    """The store holds a layout this package cannot use as it is: written by a newer version
    of the package, or an older one that must be migrated by a command the message names."""


class DecisionTimeout(OARecallError, TimeoutError):
    """A decider had not returned when ``OA_RECALL_DECISION_SECONDS`` ran out; the fallback was
    answered. Sent as ``exception=`` with :data:`~flask_oa_recall.decision_failed`.

    :param command: the before-command the decider was asked about.
    :param seconds: the budget it had, ``OA_RECALL_DECISION_SECONDS``.
    :param delivery_id: the callback's delivery id.
    """

    def __init__(self, command: str, seconds: float, delivery_id: str) -> None:
        self.command = command
        self.seconds = seconds
        self.delivery_id = delivery_id
        super().__init__(f"the decider for {command} did not return within {seconds:g} s")


class DecidersBusy(OARecallError):
    """Every decider thread of this process was still busy (deciders that never return), so
    the fallback was answered at once. Sent as ``exception=`` with
    :data:`~flask_oa_recall.decision_failed`.

    :param command: the before-command the decider would have been asked about.
    :param threads: the size of the pool, ``OA_RECALL_DECISION_THREADS``.
    :param delivery_id: the callback's delivery id.
    """

    def __init__(self, command: str, threads: int, delivery_id: str) -> None:
        self.command = command
        self.threads = threads
        self.delivery_id = delivery_id
        super().__init__(
            f"all {threads} decider threads are busy; the decider for {command} was not run"
        )
