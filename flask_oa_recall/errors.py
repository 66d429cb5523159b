"""Exceptions raised by the extension.

Every error the package raises on purpose derives from :class:`OARecallError`. Where a
built-in exception was raised before, the new class derives from it too (a missing delivery
is still a :class:`KeyError`, a malformed config value still a :class:`ValueError`), so code
that caught those keeps working.
"""

from __future__ import annotations

from .responses import REJECTIONS, Rejection

__all__ = [
    "CallbackRejected",
    "ConfigError",
    "ConfigTypeError",
    "DecidersBusy",
    "DecisionTimeout",
    "DeliveryBusy",
    "LayoutError",
    "MissingConfig",
    "MissingDependency",
    "NotSetUp",
    "OARecallError",
    "SetupError",
    "StoreError",
    "StoreUnavailable",
    "UnknownDelivery",
]


class OARecallError(Exception):
    """Base class of the errors this package raises on purpose."""


class CallbackRejected(OARecallError):
    """A request was refused; the view turns this into the ``FAIL`` envelope.

    :param reason: a key of :data:`~flask_oa_recall.REJECTIONS`.
    :param info: a specific ``ErrorInfo``; it must never contain a token or a Sign.
    :raises KeyError: if ``reason`` is not a key of :data:`~flask_oa_recall.REJECTIONS`.
    """

    def __init__(self, reason: str, info: str | None = None) -> None:
        self.rejection: Rejection = REJECTIONS[reason]
        """The status, ErrorCode and default ErrorInfo of ``reason``."""
        self.reason: str = reason
        """The key of :data:`~flask_oa_recall.REJECTIONS`."""
        self.info: str = info or self.rejection.info
        """The ``ErrorInfo`` sent back."""
        super().__init__(f"{reason}: {self.info}")


class ConfigError(OARecallError, ValueError):
    """A configuration value the extension cannot use; the message says what to set.

    :param key: the config key at fault, e.g. ``OA_RECALL_STORE``.
    :param message: what is wrong and how to fix it; never the value of a token.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key: str = key
        """The config key at fault."""
        super().__init__(message)


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value of the wrong type (a string where a list is expected...)."""


class MissingConfig(ConfigError, RuntimeError):
    """A required configuration key (``OA_RECALL_SDKAPPID``) is not set."""


class SetupError(OARecallError, RuntimeError):
    """The extension is set up twice on one app, or used on an app without it."""


class NotSetUp(SetupError):
    """The app has neither ``OARecall(app)`` nor the blueprint registered."""


class MissingDependency(OARecallError, RuntimeError):
    """A feature needs an optional extra that is not installed.

    :param extra: the extra to install, e.g. ``redis`` for ``pip install 'flask-oa-recall[redis]'``.
    :param message: what needs it.
    """

    def __init__(self, extra: str, message: str) -> None:
        self.extra: str = extra
        """The name of the extra that provides the missing package."""
        super().__init__(f"{message}: pip install 'flask-oa-recall[{extra}]'.")


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


class UnknownDelivery(OARecallError, KeyError):
    """No delivery with this ID is kept.

    :param delivery_id: the ID asked for.
    """

    def __init__(self, delivery_id: str) -> None:
        self.delivery_id: str = delivery_id
        """The ID asked for."""
        super().__init__(delivery_id)

    def __str__(self) -> str:
        return f"no delivery {self.delivery_id!r} is kept"


class DeliveryBusy(OARecallError):
    """A replay found the delivery leased by a live worker.

    :param delivery_id: the delivery's ID.
    """

    def __init__(self, delivery_id: str) -> None:
        self.delivery_id: str = delivery_id
        """The delivery's ID."""
        super().__init__(f"delivery {delivery_id!r} is leased by a live worker")


class StoreUnavailable(StoreError):
    """The store could not be read and written at start-up, and ``OA_RECALL_STORE_REQUIRED``
    is true.

    :param key: the config key that made this an error, ``"OA_RECALL_STORE_REQUIRED"``.
    """

    key = "OA_RECALL_STORE_REQUIRED"
