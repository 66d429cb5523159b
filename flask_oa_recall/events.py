"""The typed, frozen objects receivers get."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "ADD_SUBSCRIBER_COMMAND",
    "CREATE_COMMAND",
    "DELETE_SUBSCRIBER_COMMAND",
    "DESTROYED_COMMAND",
    "FULL_COMMAND",
    "INFO_CHANGED_COMMAND",
    "RECALL_COMMAND",
    "SEND_MSG_COMMAND",
    "Callback",
    "MessageSentEvent",
    "OfficialAccountChangedEvent",
    "OfficialAccountCreatedEvent",
    "OfficialAccountDestroyedEvent",
    "OfficialAccountEvent",
    "RecallEvent",
    "RecalledMessage",
    "SubscriberLimitReachedEvent",
    "SubscribersAddedEvent",
    "SubscribersDeletedEvent",
]

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

    @property
    def dedup_keys(self) -> tuple[str, ...]:
        """The claim keys of this event: its MsgKeys (each recalled message is claimed alone)."""
        return self.msg_keys

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


#: ``OfficialAccount.CallbackAfterSendMsg``: an Official Account message was delivered.
SEND_MSG_COMMAND = "OfficialAccount.CallbackAfterSendMsg"
#: ``OfficialAccount.CallbackAfterCreateOfficialAccount``: an Official Account was created.
CREATE_COMMAND = "OfficialAccount.CallbackAfterCreateOfficialAccount"
#: ``OfficialAccount.CallbackAfterOfficialAccountInfoChanged``: its profile was changed.
INFO_CHANGED_COMMAND = "OfficialAccount.CallbackAfterOfficialAccountInfoChanged"
#: ``OfficialAccount.CallbackAfterOfficialAccountDestroyed``: it was destroyed.
DESTROYED_COMMAND = "OfficialAccount.CallbackAfterOfficialAccountDestroyed"
#: ``OfficialAccount.CallbackAfterAddSubscriber``: users subscribed.
ADD_SUBSCRIBER_COMMAND = "OfficialAccount.CallbackAfterAddSubscriber"
#: ``OfficialAccount.CallbackAfterDeleteSubscriber``: users unsubscribed or were removed.
DELETE_SUBSCRIBER_COMMAND = "OfficialAccount.CallbackAfterDeleteSubscriber"
#: ``OfficialAccount.CallbackAfterOfficialAccountFull``: the subscriber limit was reached.
FULL_COMMAND = "OfficialAccount.CallbackAfterOfficialAccountFull"


@dataclass(frozen=True, kw_only=True)
class OfficialAccountEvent:
    """What every typed Official Account "after" event carries besides its own fields.

    :param official_account: the ``Official_Account`` id.
    :param event_time: when Tencent saw the event, an aware UTC datetime.
    :param event_time_ms: the same as sent (``EventTime``), in milliseconds.
    :param sdk_app_id: the SdkAppid of the request.
    :param platform: ``OptPlatform`` as sent (any value), or ``None``.
    :param client_ip: ``ClientIP`` (the end user's, not Tencent's), or ``None``.
    :param raw: the JSON body as received.
    :param delivery_id: the id of the delivery (kept or not) that carried it.
    :param dedup_key: the identity a redelivery of this event shares with it (see
        ``docs/events.rst``): the claim key under which the store remembers which receivers
        already handled it.
    """

    official_account: str
    event_time: datetime
    event_time_ms: int
    sdk_app_id: int
    platform: str | None = None
    client_ip: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    delivery_id: str = ""
    dedup_key: str = ""

    @property
    def dedup_keys(self) -> tuple[str, ...]:
        """The claim keys of this event: its one :attr:`dedup_key`."""
        return (self.dedup_key,)

    def only(self, keys: frozenset[str] | set[str]) -> OfficialAccountEvent:
        """This event (it has one identity, so there is nothing to narrow)."""
        return self


@dataclass(frozen=True, kw_only=True)
class MessageSentEvent(OfficialAccountEvent):
    """``OfficialAccount.CallbackAfterSendMsg``: an Official Account message was delivered.

    :param msg_key: the message's MsgKey, the one a later recall names.
    :param msg_time: ``MsgTime``, the send time in Unix seconds, or ``None`` if absent or odd.
    :param online_only: ``OnlineOnlyFlag`` is 1 (the message went to online subscribers only).
    :param msg_body: ``MsgBody``, the TIM message elements as sent (``()`` if absent or odd).
    :param cloud_custom_data: ``CloudCustomData``, or ``None``.
    """

    msg_key: str
    msg_time: int | None = None
    online_only: bool = False
    msg_body: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)
    cloud_custom_data: str | None = None

    @property
    def sent_at(self) -> datetime | None:
        """:attr:`msg_time` as an aware UTC datetime, or ``None``."""
        if self.msg_time is None:
            return None
        return datetime.fromtimestamp(self.msg_time, tz=timezone.utc)

    @property
    def text(self) -> str:
        """The text of the message's ``TIMTextElem`` elements, joined by newlines."""
        texts = []
        for element in self.msg_body:
            content = element.get("MsgContent")
            if element.get("MsgType") == "TIMTextElem" and isinstance(content, Mapping):
                text = content.get("Text")
                if isinstance(text, str):
                    texts.append(text)
        return "\n".join(texts)


@dataclass(frozen=True, kw_only=True)
class OfficialAccountCreatedEvent(OfficialAccountEvent):
    """``OfficialAccount.CallbackAfterCreateOfficialAccount``: an Official Account was created.

    :param operator_account: ``Operator_Account``, who created it, or ``None``.
    :param owner_account: ``Owner_Account``, or ``None``.
    :param name: ``Name``, or ``None``.
    """

    operator_account: str | None = None
    owner_account: str | None = None
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class OfficialAccountChangedEvent(OfficialAccountEvent):
    """``OfficialAccount.CallbackAfterOfficialAccountInfoChanged``: its profile was changed.

    Only the changed fields are sent; the others are ``None``.

    :param operator_account: ``Operator_Account``, who changed it, or ``None``.
    :param name: the new ``Name``.
    :param introduction: the new ``Introduction``.
    :param face_url: the new ``FaceUrl``.
    :param organization: the new ``Organization``.
    """

    operator_account: str | None = None
    name: str | None = None
    introduction: str | None = None
    face_url: str | None = None
    organization: str | None = None

    @property
    def changed(self) -> dict[str, str]:
        """The changed profile fields by their wire names (``Name``, ``FaceUrl``...)."""
        values = {
            "Name": self.name,
            "Introduction": self.introduction,
            "FaceUrl": self.face_url,
            "Organization": self.organization,
        }
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class OfficialAccountDestroyedEvent(OfficialAccountEvent):
    """``OfficialAccount.CallbackAfterOfficialAccountDestroyed``: it was destroyed.

    :param owner_account: ``Owner_Account``, or ``None``.
    :param name: ``Name``, or ``None``.
    """

    owner_account: str | None = None
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class SubscribersAddedEvent(OfficialAccountEvent):
    """``OfficialAccount.CallbackAfterAddSubscriber``: users subscribed (from a client, or
    added by an admin through REST).

    :param operator_account: ``Operator_Account``, or ``None``.
    :param subscribers: the ``Subscriber_Account`` of each ``SubscribeAccountList`` entry, in
        payload order.
    """

    operator_account: str | None = None
    subscribers: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SubscribersDeletedEvent(OfficialAccountEvent):
    """``OfficialAccount.CallbackAfterDeleteSubscriber``: users unsubscribed, or an admin
    deleted subscribers.

    :param operator_account: ``Operator_Account``, or ``None``.
    :param subscribers: the ``Subscriber_Account`` of each ``SubscribeAccountList`` entry, in
        payload order.
    """

    operator_account: str | None = None
    subscribers: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SubscriberLimitReachedEvent(OfficialAccountEvent):
    """``OfficialAccount.CallbackAfterOfficialAccountFull``: the Official Account reached its
    subscriber limit (``MaxSubscriberNum``). It carries no field of its own."""
