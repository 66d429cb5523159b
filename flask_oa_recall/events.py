"""The typed, frozen objects receivers get."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

__all__ = ["RECALL_COMMAND", "Callback", "RecallEvent", "RecalledMessage"]

#: The callback command this extension handles in full.
RECALL_COMMAND = "OfficialAccount.CallbackAfterMsgWithDraw"


@dataclass(frozen=True)
class RecalledMessage:
    """One entry of ``WithdrawMsgList``.

    :param msg_key: the MsgKey, an opaque string (usually ``Seq_1_ServerTime``).
    :param extra: fields of the entry besides ``MsgKey``, kept as sent.
    """

    msg_key: str
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def server_time(self) -> int | None:
        """The send time in seconds encoded in an ``Seq_1_ServerTime`` MsgKey, else ``None``."""
        parts = self.msg_key.split("_")
        return (
            int(parts[2]) if len(parts) == 3 and parts[2].isascii() and parts[2].isdigit() else None
        )


@dataclass(frozen=True)
class RecallEvent:
    """``OfficialAccount.CallbackAfterMsgWithDraw``: messages of an Official Account were recalled.

    :param official_account: the ``Official_Account`` id (``@TOA#_…``, or ``#TOA#_…`` in
        Tencent's sample).
    :param messages: one entry per recalled message, in payload order.
    :param event_time: when Tencent saw the recall, an aware UTC datetime.
    :param event_time_ms: the same as sent, in milliseconds.
    :param sdk_app_id: the SdkAppid of the request.
    :param platform: ``OptPlatform`` as sent (any value), or ``None``.
    :param client_ip: ``ClientIP`` (the end user's, not Tencent's), or ``None``.
    :param raw: the JSON body as received.
    :param delivery_id: the id under which the delivery is kept.
    """

    official_account: str
    messages: tuple[RecalledMessage, ...]
    event_time: datetime
    event_time_ms: int
    sdk_app_id: int
    platform: str | None
    client_ip: str | None
    raw: Mapping[str, Any] = field(compare=False, repr=False)
    delivery_id: str = ""

    @property
    def msg_keys(self) -> tuple[str, ...]:
        """The MsgKeys of :attr:`messages`, in payload order."""
        return tuple(m.msg_key for m in self.messages)

    def only(self, msg_keys: frozenset[str] | set[str]) -> RecallEvent:
        """A copy that holds only the messages whose MsgKey is in ``msg_keys``."""
        return replace(self, messages=tuple(m for m in self.messages if m.msg_key in msg_keys))


@dataclass(frozen=True)
class Callback:
    """Any accepted callback, as sent with :data:`~flask_oa_recall.callback_received`.

    :param command: ``CallbackCommand``.
    :param body: the JSON body as received.
    :param sdk_app_id: the SdkAppid of the request.
    :param delivery_id: the id under which the delivery is kept.
    :param received_at: when this server received it, an aware UTC datetime.
    :param query: the query parameters without ``Sign``, names as sent.
    :param client_ip: ``ClientIP``, or ``None``.
    :param platform: ``OptPlatform``, or ``None``.
    :param attempt: 1 for the live request, more when replayed.
    """

    command: str
    body: Mapping[str, Any] = field(repr=False)
    sdk_app_id: int
    delivery_id: str
    received_at: datetime
    query: Mapping[str, str] = field(repr=False)
    client_ip: str | None = None
    platform: str | None = None
    attempt: int = 1
