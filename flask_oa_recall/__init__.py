"""Receive Tencent Cloud Chat's Official Account recall callback in Flask, as blinker signals."""

from __future__ import annotations

from importlib.metadata import version as _distribution_version

from .blueprint import create_blueprint
from .decisions import Decision
from .errors import (
    CallbackRejected,
    ConfigError,
    ConfigTypeError,
    DecidersBusy,
    DecisionTimeout,
    DeliveryBusy,
    LayoutError,
    MissingConfig,
    MissingDependency,
    NotSetUp,
    OARecallError,
    SetupError,
    StoreError,
    UnknownDelivery,
)
from .events import RECALL_COMMAND, Callback, RecalledMessage, RecallEvent
from .extension import OARecall
from .responses import REJECTIONS, Rejection
from .signals import (
    callback_received,
    callback_rejected,
    decision_failed,
    messages_recalled,
    receiver_failed,
    store_failed,
)

__all__ = [
    "RECALL_COMMAND",
    "REJECTIONS",
    "Callback",
    "CallbackRejected",
    "ConfigError",
    "ConfigTypeError",
    "DecidersBusy",
    "Decision",
    "DecisionTimeout",
    "DeliveryBusy",
    "LayoutError",
    "MissingConfig",
    "MissingDependency",
    "NotSetUp",
    "OARecall",
    "OARecallError",
    "RecallEvent",
    "RecalledMessage",
    "Rejection",
    "SetupError",
    "StoreError",
    "UnknownDelivery",
    "callback_received",
    "callback_rejected",
    "create_blueprint",
    "decision_failed",
    "messages_recalled",
    "receiver_failed",
    "store_failed",
]

#: The installed distribution's version, read from its metadata (``pyproject.toml`` has the one
#: copy).
__version__ = _distribution_version("flask-oa-recall")
