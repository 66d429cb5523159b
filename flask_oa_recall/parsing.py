"""From raw bytes and query to typed objects; shared by the view and by replay."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from marshmallow import ValidationError

from .errors import CallbackRejected
from .events import RECALL_COMMAND, Callback, RecalledMessage, RecallEvent
from .schemas import first_error, load_recall

__all__ = [
    "MAX_JSON_DEPTH",
    "build_callback",
    "build_recall_event",
    "parse_body",
    "resolve_command",
]

#: Bodies nested deeper are refused. ``json.loads``' own limit is the interpreter's recursion
#: limit minus the depth of the calling stack, so without a fixed bound a body accepted by the
#: view could fail to parse again in ``flask oa-recall replay``, whose stack is deeper.
MAX_JSON_DEPTH = 512


def _reject_constant(name: str) -> float:
    raise ValueError(name)


#: Built once: ``json.loads`` with an argument builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


#: A ``\uD800``-``\uDFFF`` escape. JSON allows one, but a lone surrogate is no character: it
#: cannot be written as UTF-8 (to the store, or by a receiver), so such a body is refused.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _deeper_than(body: object, limit: int) -> bool:
    """Whether the parsed JSON ``body`` nests arrays and objects more than ``limit`` deep."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = []
    if type(body) is dict or type(body) is list:
        stack.append((body, 1))
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode ``raw`` as a UTF-8 JSON object, whatever the request's Content-Type said."""
    try:
        body = _DECODER.decode(raw.decode("utf-8"))
        if _SURROGATE_ESCAPE.search(raw):
            json.dumps(body, ensure_ascii=False).encode("utf-8")  # fails on a lone surrogate
    except (UnicodeError, ValueError, RecursionError):
        raise CallbackRejected("malformed_body") from None
    # Only a body with that many brackets can be that deep; most pay for two counts.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _deeper_than(body, MAX_JSON_DEPTH):
        raise CallbackRejected(
            "malformed_body", f"The body is nested more than {MAX_JSON_DEPTH} levels deep."
        )
    if not isinstance(body, dict):
        raise CallbackRejected("malformed_body", "The body is JSON but not an object.")
    return body


def resolve_command(query: Mapping[str, str], body: Mapping[str, Any]) -> str:
    """The callback command: the query's, which the body must not contradict."""
    in_query = query.get("CallbackCommand")
    in_body = body.get("CallbackCommand")
    if in_body is not None and not isinstance(in_body, str):
        raise CallbackRejected("invalid_payload", "CallbackCommand: Not a valid string.")
    if not in_query:
        if not in_body:
            raise CallbackRejected("missing_command")
        return in_body
    if in_body is not None and in_body != in_query:
        raise CallbackRejected("command_mismatch")
    if in_query == RECALL_COMMAND and in_body is None:
        raise CallbackRejected(
            "invalid_payload", "CallbackCommand: Missing data for required field."
        )
    return in_query


def build_recall_event(
    body: Mapping[str, Any], query: Mapping[str, str], sdk_app_id: int, delivery_id: str
) -> RecallEvent:
    """Load a recall body with the schemas into a :class:`RecallEvent`."""
    try:
        data = load_recall(body)
    except ValidationError as err:
        raise CallbackRejected("invalid_payload", first_error(err)) from None
    unique: dict[str, RecalledMessage] = {}
    for message in data["WithdrawMsgList"]:
        unique.setdefault(message.msg_key, message)
    ms: int = data["EventTime"]
    return RecallEvent(
        official_account=data["Official_Account"],
        messages=tuple(unique.values()),
        event_time=datetime.fromtimestamp(ms / 1000, tz=timezone.utc),
        event_time_ms=ms,
        sdk_app_id=sdk_app_id,
        platform=query.get("OptPlatform"),
        client_ip=query.get("ClientIP"),
        raw=body,
        delivery_id=delivery_id,
    )


def build_callback(
    command: str,
    body: Mapping[str, Any],
    query: Mapping[str, str],
    sdk_app_id: int,
    delivery_id: str,
    received_at: float,
    attempt: int = 1,
) -> Callback:
    """The :class:`Callback` sent with ``callback_received``."""
    canonical = {k.lower(): v for k, v in query.items()}
    return Callback(
        command=command,
        body=body,
        sdk_app_id=sdk_app_id,
        delivery_id=delivery_id,
        received_at=datetime.fromtimestamp(received_at, tz=timezone.utc),
        query=query,
        client_ip=canonical.get("clientip"),
        platform=canonical.get("optplatform"),
        attempt=attempt,
    )
