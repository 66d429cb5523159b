"""Helpers for testing an app that uses flask_oa_recall: signed callbacks and captured events.

::

    from flask_oa_recall.testing import post_callback, capture_recalls

    def test_recall_hides_message(app):
        with capture_recalls(app) as events:
            response = post_callback(app.test_client(), app, msg_keys=["71_1_1698741698"])
        assert response.json["ActionStatus"] == "OK"
        assert events[0].msg_keys == ("71_1_1698741698",)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from .events import RECALL_COMMAND, Callback, RecallEvent
from .security import sign
from .signals import callback_received, messages_recalled

__all__ = [
    "DEFAULT_OFFICIAL_ACCOUNT",
    "callback_body",
    "capture_callbacks",
    "capture_recalls",
    "post_callback",
    "recall_body",
    "sign",
    "signed_query",
]

#: The Official Account id used when none is given (Tencent's documented prefix).
DEFAULT_OFFICIAL_ACCOUNT = "@TOA#_test"


def recall_body(
    msg_keys: Sequence[str] = ("71_1_1698741698",),
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    event_time_ms: int | str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``OfficialAccount.CallbackAfterMsgWithDraw`` body, as Tencent sends it."""
    return {
        "CallbackCommand": RECALL_COMMAND,
        "Official_Account": official_account,
        "WithdrawMsgList": [{"MsgKey": key} for key in msg_keys],
        "EventTime": int(time.time() * 1000) if event_time_ms is None else event_time_ms,
        **extra,
    }


def callback_body(command: str, **fields: Any) -> dict[str, Any]:
    """The body of any other command: ``CallbackCommand``, ``EventTime`` and ``fields``."""
    return {"CallbackCommand": command, "EventTime": int(time.time() * 1000), **fields}


def _config_defaults(app: Flask | None) -> tuple[int | None, str | None]:
    if app is None:
        return None, None
    ids = app.config.get("OA_RECALL_SDKAPPID")
    sdk_app_id = ids[0] if isinstance(ids, list | tuple) else ids
    tokens = app.config.get("OA_RECALL_TOKENS") or []
    if isinstance(tokens, Mapping):
        tokens = tokens.get(sdk_app_id) or tokens.get(str(sdk_app_id)) or []
    return (int(sdk_app_id) if sdk_app_id is not None else None), (tokens[0] if tokens else None)


def signed_query(
    app: Flask | None = None,
    *,
    command: str = RECALL_COMMAND,
    sdk_app_id: int | None = None,
    token: str | None = None,
    request_time: int | str | None = None,
    client_ip: str | None = "127.0.0.1",
    platform: str | None = "RESTAPI",
    **extra: str,
) -> str:
    """The query string Tencent appends, signed when a token is known.

    SdkAppid and token default to the first ones in ``app``'s config.
    """
    default_id, default_token = _config_defaults(app)
    sdk_app_id = sdk_app_id if sdk_app_id is not None else default_id
    token = token if token is not None else default_token
    params: dict[str, str] = {"SdkAppid": str(sdk_app_id), "CallbackCommand": command}
    params["contenttype"] = "json"
    if client_ip is not None:
        params["ClientIP"] = client_ip
    if platform is not None:
        params["OptPlatform"] = platform
    if token:
        when = str(int(time.time()) if request_time is None else request_time)
        params["Sign"] = sign(token, when)
        params["RequestTime"] = when
    params.update(extra)
    return urlencode(params)


def post_callback(
    client: FlaskClient,
    app: Flask,
    body: Mapping[str, Any] | bytes | None = None,
    *,
    msg_keys: Sequence[str] = ("71_1_1698741698",),
    path: str | None = None,
    **query: Any,
) -> TestResponse:
    """POST a signed callback through ``client``; the body defaults to a recall of ``msg_keys``."""
    if body is None:
        body = recall_body(msg_keys)
    command = query.pop("command", None)
    if command is None:
        command = (
            body.get("CallbackCommand", RECALL_COMMAND)
            if isinstance(body, Mapping)
            else RECALL_COMMAND
        )
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"{path or app.config['OA_RECALL_PATH']}?{signed_query(app, command=command, **query)}"
    return client.post(url, data=data)


@contextmanager
def capture_recalls(app: Flask) -> Iterator[list[RecallEvent]]:
    """Collect the :class:`RecallEvent` s that ``app`` emits inside the block."""
    events: list[RecallEvent] = []

    def record(sender: Flask, event: RecallEvent, **_: Any) -> None:
        events.append(event)

    with messages_recalled.connected_to(record, app):
        yield events


@contextmanager
def capture_callbacks(app: Flask) -> Iterator[list[Callback]]:
    """Collect the :class:`Callback` s that ``app`` accepts inside the block."""
    callbacks: list[Callback] = []

    def record(sender: Flask, callback: Callback, **_: Any) -> None:
        callbacks.append(callback)

    with callback_received.connected_to(record, app):
        yield callbacks
