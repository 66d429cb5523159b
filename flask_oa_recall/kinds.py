"""The typed commands: for each, its schema, its event type, its signal and its dedup identity.

The recall and the seven other Official Account "after" commands are loaded into frozen events
and sent through their own signal, each event exactly once per receiver. Dedup reuses the store's
per-message claims: an event's :attr:`dedup_keys` are the keys its delivery claims (the MsgKeys of
a recall; one identity for the others, see :func:`digest_identity`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from blinker import NamedSignal
from marshmallow import Schema, ValidationError

from . import signals
from .errors import CallbackRejected
from .events import (
    ADD_SUBSCRIBER_COMMAND,
    CREATE_COMMAND,
    DELETE_SUBSCRIBER_COMMAND,
    DESTROYED_COMMAND,
    FULL_COMMAND,
    INFO_CHANGED_COMMAND,
    RECALL_COMMAND,
    SEND_MSG_COMMAND,
    MessageSentEvent,
    OfficialAccountChangedEvent,
    OfficialAccountCreatedEvent,
    OfficialAccountDestroyedEvent,
    OfficialAccountEvent,
    RecallEvent,
    SubscriberLimitReachedEvent,
    SubscribersAddedEvent,
    SubscribersDeletedEvent,
)
from .parsing import build_recall_event
from .schemas import (
    AfterAddSubscriberBodySchema,
    AfterCreateBodySchema,
    AfterDeleteSubscriberBodySchema,
    AfterDestroyedBodySchema,
    AfterFullBodySchema,
    AfterInfoChangedBodySchema,
    AfterSendMsgBodySchema,
    RecallBodySchema,
    first_error,
)

__all__ = ["KINDS", "Event", "EventKind", "canonical_json", "digest_identity", "kind_of"]

#: Any typed event a receiver can get.
Event = RecallEvent | OfficialAccountEvent

Loader = Callable[[Mapping[str, Any], Mapping[str, str], int, str], Event]


@dataclass(frozen=True)
class EventKind:
    """One typed command.

    :param command: its ``CallbackCommand``.
    :param signal: the signal its events are sent through.
    :param signal_name: that signal's name as exported from :mod:`flask_oa_recall`; receivers'
        progress is kept under ``"<signal_name>:<receiver>"``.
    :param event_type: the frozen dataclass receivers get as ``event=``.
    :param schema: the marshmallow schema of its body (built once, shared).
    :param load: body, canonical query, SdkAppid, delivery id to event; raises
        :class:`~flask_oa_recall.CallbackRejected` (``invalid_payload``) on a malformed body.
    """

    command: str
    signal: NamedSignal
    signal_name: str
    event_type: type[Event]
    schema: Schema
    load: Loader


def canonical_json(body: Mapping[str, Any]) -> bytes:
    """``body`` as canonical JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def short_command(command: str) -> str:
    """``OfficialAccount.CallbackAfterSendMsg`` -> ``AfterSendMsg``: the prefix of claim keys."""
    return command.rpartition(".")[2].removeprefix("Callback")


def digest_identity(command: str, body: Mapping[str, Any]) -> str:
    """The identity of an event without a MsgKey: ``<short command>:`` and the first 32 hex
    digits of the SHA-256 of the canonical JSON body.

    A redelivery carries the same body, so it has the same identity; two different events differ
    somewhere in their body (at least in ``EventTime``, in milliseconds), so they do not, even
    when they share a ``Sign`` (same second, same token).
    """
    return f"{short_command(command)}:{hashlib.sha256(canonical_json(body)).hexdigest()[:32]}"


def _validated(schema: Schema, body: Mapping[str, Any]) -> dict[str, Any]:
    try:
        data: dict[str, Any] = schema.load(body)
    except ValidationError as err:
        raise CallbackRejected("invalid_payload", first_error(err)) from None
    return data


def _typed_loader(
    command: str,
    event_type: type[OfficialAccountEvent],
    schema: Schema,
    fields: Mapping[str, str],
    identity: Callable[[Mapping[str, Any], Mapping[str, Any]], str],
) -> Loader:
    """A loader for ``event_type``: ``fields`` maps wire names to the event's own fields."""

    def load(
        body: Mapping[str, Any], query: Mapping[str, str], sdk_app_id: int, delivery_id: str
    ) -> Event:
        data = _validated(schema, body)
        ms: int = data["EventTime"]
        own = {attr: data[wire] for wire, attr in fields.items() if data.get(wire) is not None}
        return event_type(
            official_account=data["Official_Account"],
            event_time=datetime.fromtimestamp(ms / 1000, tz=timezone.utc),
            event_time_ms=ms,
            sdk_app_id=sdk_app_id,
            platform=query.get("OptPlatform"),
            client_ip=query.get("ClientIP"),
            raw=body,
            delivery_id=delivery_id,
            dedup_key=identity(data, body),
            **own,
        )

    return load


def _msg_key_identity(data: Mapping[str, Any], body: Mapping[str, Any]) -> str:
    # Namespaced, so that it never claims the same key as a recall of that MsgKey.
    return f"{short_command(SEND_MSG_COMMAND)}:{data['MsgKey']}"


def _body_identity(command: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], str]:
    def identity(data: Mapping[str, Any], body: Mapping[str, Any]) -> str:
        return digest_identity(command, body)

    return identity


def _kind(
    command: str,
    signal: NamedSignal,
    signal_name: str,
    event_type: type[OfficialAccountEvent],
    schema: Schema,
    fields: Mapping[str, str],
) -> EventKind:
    identity = _msg_key_identity if command == SEND_MSG_COMMAND else _body_identity(command)
    loader = _typed_loader(command, event_type, schema, fields, identity)
    return EventKind(command, signal, signal_name, event_type, schema, loader)


_SUBSCRIBERS = {"Operator_Account": "operator_account", "SubscribeAccountList": "subscribers"}

#: Every typed command by its ``CallbackCommand``.
KINDS: Mapping[str, EventKind] = {
    kind.command: kind
    for kind in (
        EventKind(
            RECALL_COMMAND,
            signals.messages_recalled,
            "messages_recalled",
            RecallEvent,
            RecallBodySchema(),
            build_recall_event,
        ),
        _kind(
            SEND_MSG_COMMAND,
            signals.message_sent,
            "message_sent",
            MessageSentEvent,
            AfterSendMsgBodySchema(),
            {
                "MsgKey": "msg_key",
                "MsgTime": "msg_time",
                "OnlineOnlyFlag": "online_only",
                "MsgBody": "msg_body",
                "CloudCustomData": "cloud_custom_data",
            },
        ),
        _kind(
            CREATE_COMMAND,
            signals.official_account_created,
            "official_account_created",
            OfficialAccountCreatedEvent,
            AfterCreateBodySchema(),
            {
                "Operator_Account": "operator_account",
                "Owner_Account": "owner_account",
                "Name": "name",
            },
        ),
        _kind(
            INFO_CHANGED_COMMAND,
            signals.official_account_changed,
            "official_account_changed",
            OfficialAccountChangedEvent,
            AfterInfoChangedBodySchema(),
            {
                "Operator_Account": "operator_account",
                "Name": "name",
                "Introduction": "introduction",
                "FaceUrl": "face_url",
                "Organization": "organization",
            },
        ),
        _kind(
            DESTROYED_COMMAND,
            signals.official_account_destroyed,
            "official_account_destroyed",
            OfficialAccountDestroyedEvent,
            AfterDestroyedBodySchema(),
            {"Owner_Account": "owner_account", "Name": "name"},
        ),
        _kind(
            ADD_SUBSCRIBER_COMMAND,
            signals.subscribers_added,
            "subscribers_added",
            SubscribersAddedEvent,
            AfterAddSubscriberBodySchema(),
            _SUBSCRIBERS,
        ),
        _kind(
            DELETE_SUBSCRIBER_COMMAND,
            signals.subscribers_deleted,
            "subscribers_deleted",
            SubscribersDeletedEvent,
            AfterDeleteSubscriberBodySchema(),
            _SUBSCRIBERS,
        ),
        _kind(
            FULL_COMMAND,
            signals.subscriber_limit_reached,
            "subscriber_limit_reached",
            SubscriberLimitReachedEvent,
            AfterFullBodySchema(),
            {},
        ),
    )
}

_BY_TYPE = {kind.event_type: kind for kind in KINDS.values()}


def kind_of(event: Event) -> EventKind:
    """The kind an event belongs to."""
    return _BY_TYPE[type(event)]
