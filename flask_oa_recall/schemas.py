"""Marshmallow schemas for the callback bodies.

Unknown fields are kept (``INCLUDE``), never rejected: Tencent adds fields without notice, and
the raw body is handed to receivers anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, post_load, validate

from .events import RecalledMessage

__all__ = ["EventTimeField", "RecallBodySchema", "WithdrawMsgSchema", "recall_body_schema"]

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


class RecallBodySchema(Schema):
    """The body of ``OfficialAccount.CallbackAfterMsgWithDraw``."""

    class Meta:
        unknown = INCLUDE

    CallbackCommand = fields.String(required=True)
    Official_Account = fields.String(required=True, validate=validate.Length(min=1))
    # Nested(many=True) rather than List(Nested(...)): one load over the entries instead of one
    # per entry: about a quarter less per MsgKey (measured with python -m bench.profile).
    WithdrawMsgList = fields.Nested(
        WithdrawMsgSchema, many=True, required=True, validate=validate.Length(min=1)
    )
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
