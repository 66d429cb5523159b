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
    StoreUnavailable,
    UnknownDelivery,
)
from .events import (
    RECALL_COMMAND,
    Callback,
    MessageSentEvent,
    OfficialAccountChangedEvent,
    OfficialAccountCreatedEvent,
    OfficialAccountDestroyedEvent,
    OfficialAccountEvent,
    RecalledMessage,
    RecallEvent,
    SubscriberLimitReachedEvent,
    SubscribersAddedEvent,
    SubscribersDeletedEvent,
)
from .extension import OARecall
from .responses import REJECTIONS, Rejection
from .signals import (
    callback_received,
    callback_rejected,
    decision_failed,
    message_sent,
    messages_recalled,
    official_account_changed,
    official_account_created,
    official_account_destroyed,
    receiver_failed,
    store_failed,
    store_forgot,
    subscriber_limit_reached,
    subscribers_added,
    subscribers_deleted,
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
    "MessageSentEvent",
    "MissingConfig",
    "MissingDependency",
    "NotSetUp",
    "OARecall",
    "OARecallError",
    "OfficialAccountChangedEvent",
    "OfficialAccountCreatedEvent",
    "OfficialAccountDestroyedEvent",
    "OfficialAccountEvent",
    "RecallEvent",
    "RecalledMessage",
    "Rejection",
    "SetupError",
    "StoreError",
    "StoreUnavailable",
    "SubscriberLimitReachedEvent",
    "SubscribersAddedEvent",
    "SubscribersDeletedEvent",
    "UnknownDelivery",
    "callback_received",
    "callback_rejected",
    "create_blueprint",
    "decision_failed",
    "message_sent",
    "messages_recalled",
    "official_account_changed",
    "official_account_created",
    "official_account_destroyed",
    "receiver_failed",
    "store_failed",
    "store_forgot",
    "subscriber_limit_reached",
    "subscribers_added",
    "subscribers_deleted",
]

#: The installed distribution's version, read from its metadata (``pyproject.toml`` has the one
#: copy).
__version__ = _distribution_version("flask-oa-recall")
