"""Marshmallow schemas for the callback bodies.

Unknown fields are kept (``INCLUDE``), never rejected: Tencent adds fields without notice, and
the raw body is handed to receivers anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, post_load, validate

from .events import RecalledMessage

__all__ = [
    "AfterAddSubscriberBodySchema",
    "AfterCreateBodySchema",
    "AfterDeleteSubscriberBodySchema",
    "AfterDestroyedBodySchema",
    "AfterEventBodySchema",
    "AfterFullBodySchema",
    "AfterInfoChangedBodySchema",
    "AfterSendMsgBodySchema",
    "AfterSubscribersBodySchema",
    "EventTimeField",
    "LenientFlag",
    "LenientInteger",
    "LenientObjects",
    "LenientString",
    "RecallBodySchema",
    "SubscriberListField",
    "WithdrawMsgListField",
    "WithdrawMsgSchema",
    "recall_body_schema",
]

#: 9999-12-31T23:59:59.999Z, the last millisecond a ``datetime`` can hold.
MAX_EVENT_TIME_MS = 253_402_300_799_999


class EventTimeField(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """A millisecond Unix time sent as an integer or, in some of Tencent's samples, a string."""

    default_error_messages = {  # noqa: RUF012 (marshmallow's own convention)
        "invalid": "Not a millisecond Unix time.",
        "range": "Out of range.",
    }

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, int):
            ms = value
        elif isinstance(value, str) and value.isascii() and value.strip().isdigit():
            digits = value.strip()
            # int() raises ValueError past 4300 digits; no valid time has more than 20.
            if len(digits) > 20:
                raise self.make_error("range")
            ms = int(digits)
        else:
            raise self.make_error("invalid")
        if not 0 <= ms <= MAX_EVENT_TIME_MS:
            raise self.make_error("range")
        return ms


class WithdrawMsgSchema(Schema):
    """One ``WithdrawMsgList`` entry: ``{"MsgKey": "71_1_1698741698"}``."""

    class Meta:
        unknown = INCLUDE

    MsgKey = fields.String(required=True, validate=validate.Length(min=1))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> RecalledMessage:
        msg_key = data.pop("MsgKey")
        return RecalledMessage(msg_key=msg_key, extra=data)


class WithdrawMsgListField(fields.Nested):
    """``WithdrawMsgList``: its entries loaded through :class:`WithdrawMsgSchema`.

    An entry that is exactly ``{"MsgKey": "<non-empty string>"}`` (what Tencent sends) becomes
    the :class:`~flask_oa_recall.RecalledMessage` the schema would build, without the schema's
    per-entry machinery (about 5 µs per MsgKey); a list holding any other entry is loaded by
    the schema as a whole, with its messages and unknown fields.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(WithdrawMsgSchema, many=True, **kwargs)

    def _deserialize(
        self,
        value: Any,
        attr: str | None,
        data: Mapping[str, Any] | None,
        partial: Any = None,
        **kwargs: Any,
    ) -> Any:
        if type(value) is list:
            loaded = []
            for entry in value:
                if type(entry) is not dict or len(entry) != 1:
                    break
                key = entry.get("MsgKey")
                if type(key) is not str or not key:
                    break
                loaded.append(RecalledMessage(key, {}))
            else:
                return loaded
        return super()._deserialize(value, attr, data, partial, **kwargs)


class RecallBodySchema(Schema):
    """The body of ``OfficialAccount.CallbackAfterMsgWithDraw``."""

    class Meta:
        unknown = INCLUDE

    CallbackCommand = fields.String(required=True)
    Official_Account = fields.String(required=True, validate=validate.Length(min=1))
    WithdrawMsgList = WithdrawMsgListField(required=True, validate=validate.Length(min=1))
    EventTime = EventTimeField(required=True)


#: Built once; schemas are safe to share between threads for ``load``.
recall_body_schema = RecallBodySchema()


def load_recall(body: Mapping[str, Any]) -> dict[str, Any]:
    """Load a recall body; raise :class:`marshmallow.ValidationError` with field messages."""
    result: dict[str, Any] = recall_body_schema.load(body)
    return result


def first_error(err: ValidationError) -> str:
    """A short, secret-free text naming the first failing field."""
    messages = err.messages

    def walk(path: list[str], node: object) -> str:
        if isinstance(node, dict) and node:
            key, value = next(iter(node.items()))
            return walk([*path, str(key)], value)
        if isinstance(node, list) and node:
            return walk(path, node[0])
        return f"{'.'.join(path) or 'body'}: {node}"

    return walk([], messages)


class LenientString(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """An optional string that never refuses a body: any other value loads as ``None``.

    The raw body keeps what was sent; a receiver that needs an odd value reads it there.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_none=True, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str | None:
        return value if isinstance(value, str) else None


class LenientInteger(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """An optional integer (or string of digits) that never refuses a body: else ``None``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_none=True, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
            return int(value)
        return None


class LenientFlag(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """An optional 0/1 flag (``OnlineOnlyFlag``): 1 or ``"1"`` (or ``true``) loads as ``True``,
    0 as ``False``, anything else as ``None``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_none=True, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> bool | None:
        if value in (1, "1") or value is True:
            return True
        if value in (0, "0") or value is False:
            return False
        return None


class LenientObjects(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """An optional list of JSON objects; entries that are not objects, or a value that is not a
    list, are left out (the raw body keeps them)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_none=True, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> tuple[Mapping[str, Any], ...]:
        if not isinstance(value, list):
            return ()
        return tuple(entry for entry in value if isinstance(entry, dict))


class SubscriberListField(LenientObjects):
    """``SubscribeAccountList: [{"Subscriber_Account": "user1"}]`` as the accounts' ids; an
    entry without a string ``Subscriber_Account`` is left out."""

    def _deserialize(  # type: ignore[override]
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> tuple[str, ...]:
        entries = super()._deserialize(value, attr, data, **kwargs)
        accounts = (entry.get("Subscriber_Account") for entry in entries)
        return tuple(a for a in accounts if isinstance(a, str) and a)


class AfterEventBodySchema(Schema):
    """What every typed Official Account "after" body must carry: the command, the account and
    ``EventTime``. Every other field is optional and never refuses a body: an odd value loads as
    ``None`` and stays in the raw body."""

    class Meta:
        unknown = INCLUDE

    CallbackCommand = fields.String(required=True)
    Official_Account = fields.String(required=True, validate=validate.Length(min=1))
    EventTime = EventTimeField(required=True)


class AfterSendMsgBodySchema(AfterEventBodySchema):
    """``OfficialAccount.CallbackAfterSendMsg``; ``MsgKey`` is required (it is the identity)."""

    MsgKey = fields.String(required=True, validate=validate.Length(min=1))
    MsgTime = LenientInteger()
    OnlineOnlyFlag = LenientFlag()
    MsgBody = LenientObjects()
    CloudCustomData = LenientString()


class AfterCreateBodySchema(AfterEventBodySchema):
    """``OfficialAccount.CallbackAfterCreateOfficialAccount``."""

    Operator_Account = LenientString()
    Owner_Account = LenientString()
    Name = LenientString()


class AfterInfoChangedBodySchema(AfterEventBodySchema):
    """``OfficialAccount.CallbackAfterOfficialAccountInfoChanged``: the changed fields only."""

    Operator_Account = LenientString()
    Name = LenientString()
    Introduction = LenientString()
    FaceUrl = LenientString()
    Organization = LenientString()


class AfterDestroyedBodySchema(AfterEventBodySchema):
    """``OfficialAccount.CallbackAfterOfficialAccountDestroyed``."""

    Owner_Account = LenientString()
    Name = LenientString()


class AfterSubscribersBodySchema(AfterEventBodySchema):
    """``OfficialAccount.CallbackAfterAddSubscriber`` and ``...AfterDeleteSubscriber``."""

    Operator_Account = LenientString()
    SubscribeAccountList = SubscriberListField()


class AfterAddSubscriberBodySchema(AfterSubscribersBodySchema):
    """``OfficialAccount.CallbackAfterAddSubscriber``."""


class AfterDeleteSubscriberBodySchema(AfterSubscribersBodySchema):
    """``OfficialAccount.CallbackAfterDeleteSubscriber``."""


class AfterFullBodySchema(AfterEventBodySchema):
    """``OfficialAccount.CallbackAfterOfficialAccountFull``: the account only."""
