"""Receive Tencent Cloud Chat's Official Account recall callback in Flask, as blinker signals."""

from __future__ import annotations

from .blueprint import create_blueprint
from .decisions import Decision
from .errors import CallbackRejected, DecidersBusy, DecisionTimeout, OARecallError, StoreError
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
    "DecidersBusy",
    "Decision",
    "DecisionTimeout",
    "OARecall",
    "OARecallError",
    "RecallEvent",
    "RecalledMessage",
    "Rejection",
    "StoreError",
    "callback_received",
    "callback_rejected",
    "create_blueprint",
    "decision_failed",
    "messages_recalled",
    "receiver_failed",
    "store_failed",
]

__version__ = "0.1.0"
