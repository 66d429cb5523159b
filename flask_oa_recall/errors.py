"""Exceptions raised by the extension."""

from __future__ import annotations

from .responses import REJECTIONS, Rejection

__all__ = ["CallbackRejected", "LayoutError", "OARecallError", "StoreError"]


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
