"""Helpers for testing an app that uses flask_oa_recall: signed callbacks and captured events.

Build a callback as Tencent sends it, post it through Flask's test client, and look at what the
app emitted::

    from flask_oa_recall.testing import capture, post_callback

    def test_recall_hides_message(app):
        with capture(app) as seen:
            response = post_callback(app.test_client(), app, msg_keys=["71_1_1698741698"])
        assert response.json["ActionStatus"] == "OK"
        assert seen.msg_keys == ["71_1_1698741698"]

With pytest, the fixtures of :mod:`flask_oa_recall.pytest_plugin` (``oa_recall_post``,
``oa_recall_events``, ...) do the same in one line each.

The helpers read the SdkAppid and the first token from the app's config, so what they sign is
what the app accepts. Nothing here mocks the extension: requests go through the real route.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from .config import DEFAULTS, parse_settings
from .events import RECALL_COMMAND, Callback, RecallEvent
from .security import sign
from .signals import (
    callback_received,
    callback_rejected,
    messages_recalled,
    receiver_failed,
    store_failed,
)

__all__ = [
    "ADD_SUBSCRIBER_COMMAND",
    "DEFAULT_MSG_KEY",
    "DEFAULT_OFFICIAL_ACCOUNT",
    "SEND_MSG_COMMAND",
    "Captured",
    "ReceiverFailure",
    "Rejected",
    "after_add_subscriber_body",
    "after_send_msg_body",
    "callback_body",
    "callback_path",
    "capture",
    "capture_callbacks",
    "capture_recalls",
    "post_callback",
    "recall_body",
    "sign",
    "signed_query",
]

#: The Official Account id used when none is given (Tencent's documented prefix).
DEFAULT_OFFICIAL_ACCOUNT = "@TOA#_test"

#: The MsgKey of Tencent's sample request, used when none is given.
DEFAULT_MSG_KEY = "71_1_1698741698"

#: ``OfficialAccount.CallbackAfterSendMsg``: an Official Account message was delivered.
SEND_MSG_COMMAND = "OfficialAccount.CallbackAfterSendMsg"

#: ``OfficialAccount.CallbackAfterAddSubscriber``: users subscribed to an Official Account.
ADD_SUBSCRIBER_COMMAND = "OfficialAccount.CallbackAfterAddSubscriber"


def _now_ms() -> int:
    return int(time.time() * 1000)


def recall_body(
    msg_keys: Sequence[str] = (DEFAULT_MSG_KEY,),
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    event_time_ms: int | str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``OfficialAccount.CallbackAfterMsgWithDraw`` body, as Tencent sends it.

    :param msg_keys: the recalled MsgKeys, one ``WithdrawMsgList`` entry each, in this order.
    :param official_account: the ``Official_Account`` id.
    :param event_time_ms: ``EventTime``; now by default. A string is sent as a string, as in
        some of Tencent's samples.
    :param extra: more top-level fields (unknown fields are kept by the extension).
    """
    return {
        "CallbackCommand": RECALL_COMMAND,
        "Official_Account": official_account,
        "WithdrawMsgList": [{"MsgKey": key} for key in msg_keys],
        "EventTime": _now_ms() if event_time_ms is None else event_time_ms,
        **extra,
    }


def callback_body(command: str, **fields: Any) -> dict[str, Any]:
    """The body of any other command: ``CallbackCommand``, ``EventTime`` (now) and ``fields``.

    ``fields`` may override ``EventTime``.
    """
    return {"CallbackCommand": command, "EventTime": _now_ms(), **fields}


def after_send_msg_body(
    msg_key: str = DEFAULT_MSG_KEY,
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    text: str = "hello",
    msg_time: int | None = None,
    online_only: bool = False,
    cloud_custom_data: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackAfterSendMsg`` body carrying one text message.

    :param msg_key: the new message's MsgKey.
    :param text: the text of its single ``TIMTextElem``.
    :param msg_time: ``MsgTime`` in seconds; now by default.
    """
    return callback_body(
        SEND_MSG_COMMAND,
        Official_Account=official_account,
        MsgKey=msg_key,
        MsgTime=int(time.time()) if msg_time is None else msg_time,
        OnlineOnlyFlag=int(online_only),
        MsgBody=[{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}],
        CloudCustomData=cloud_custom_data,
        **extra,
    )


def after_add_subscriber_body(
    subscribers: Sequence[str],
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    operator: str = "admin",
    **extra: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackAfterAddSubscriber`` body for ``subscribers``."""
    return callback_body(
        ADD_SUBSCRIBER_COMMAND,
        Official_Account=official_account,
        Operator_Account=operator,
        SubscribeAccountList=[{"Subscriber_Account": s} for s in subscribers],
        **extra,
    )


def _config_defaults(app: Flask | None) -> tuple[int | None, str | None]:
    if app is None or app.config.get("OA_RECALL_SDKAPPID") is None:
        return None, None
    # The extension's own parsing, so every form the config accepts works here too.
    settings = parse_settings(app.config)
    configured = app.config["OA_RECALL_SDKAPPID"]
    if isinstance(configured, list | tuple) and configured:
        sdk_app_id = int(configured[0])
    else:
        sdk_app_id = min(settings.sdk_app_ids)
    tokens = settings.tokens.get(sdk_app_id, ())
    return sdk_app_id, (tokens[0] if tokens else None)


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

    :param app: SdkAppid and token default to the first ones in its config.
    :param command: ``CallbackCommand``.
    :param sdk_app_id: overrides the app's first SdkAppid.
    :param token: overrides the app's first token; ``""`` sends no ``Sign``/``RequestTime``.
    :param request_time: ``RequestTime`` in Unix seconds; now by default.
    :param client_ip: ``ClientIP``, or ``None`` to leave it out.
    :param platform: ``OptPlatform``, or ``None`` to leave it out.
    :param extra: more parameters, added last (a name given twice makes the query ambiguous).
    :raises ValueError: if no SdkAppid is known.
    """
    default_id, default_token = _config_defaults(app)
    sdk_app_id = sdk_app_id if sdk_app_id is not None else default_id
    if sdk_app_id is None:
        raise ValueError("signed_query needs an SdkAppid: pass app= or sdk_app_id=.")
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


def callback_path(app: Flask) -> str:
    """The path of ``app``'s callback route, read from ``app.url_map``.

    Follows a ``url_prefix`` given to :func:`~flask_oa_recall.create_blueprint`; falls back to
    ``OA_RECALL_PATH`` if no route serves the callback.
    """
    from .blueprint import callback

    for rule in app.url_map.iter_rules():
        if app.view_functions.get(rule.endpoint) is callback:
            return rule.rule
    path: str = app.config.get("OA_RECALL_PATH", DEFAULTS["OA_RECALL_PATH"])
    return path


def post_callback(
    client: FlaskClient,
    app: Flask | None = None,
    body: Mapping[str, Any] | bytes | None = None,
    *,
    msg_keys: Sequence[str] = (DEFAULT_MSG_KEY,),
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    path: str | None = None,
    **query: Any,
) -> TestResponse:
    """POST a signed callback through ``client``, as Tencent would.

    :param client: the app's test client.
    :param app: whose config signs the request; ``client.application`` by default.
    :param body: a dict (sent as JSON) or raw bytes; by default a recall of ``msg_keys`` by
        ``official_account``.
    :param path: the URL path; the app's callback route by default.
    :param query: passed to :func:`signed_query` (``command``, ``token``, ``request_time``, ...).
        ``command`` defaults to the body's ``CallbackCommand``.
    """
    app = app if app is not None else client.application
    if body is None:
        body = recall_body(msg_keys, official_account=official_account)
    command = query.pop("command", None)
    if command is None:
        command = (
            body.get("CallbackCommand", RECALL_COMMAND)
            if isinstance(body, Mapping)
            else RECALL_COMMAND
        )
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"{path or callback_path(app)}?{signed_query(app, command=command, **query)}"
    return client.post(url, data=data, content_type="application/json")


@dataclass(frozen=True)
class Rejected:
    """A request the app refused, as sent with :data:`~flask_oa_recall.callback_rejected`."""

    reason: str
    error_code: int
    status: int


@dataclass(frozen=True)
class ReceiverFailure:
    """A receiver that raised, as sent with :data:`~flask_oa_recall.receiver_failed`."""

    receiver: str
    signal_name: str
    exception: BaseException
    delivery_id: str


@dataclass
class Captured:
    """Everything ``app`` emitted inside a :func:`capture` block, in order of emission."""

    recalls: list[RecallEvent] = field(default_factory=list)
    """The :class:`RecallEvent` s sent with ``messages_recalled``."""
    callbacks: list[Callback] = field(default_factory=list)
    """The :class:`Callback` s sent with ``callback_received`` (every accepted request)."""
    rejections: list[Rejected] = field(default_factory=list)
    """Every refused request."""
    failures: list[ReceiverFailure] = field(default_factory=list)
    """Every receiver that raised."""
    store_failures: list[BaseException] = field(default_factory=list)
    """Every error of the delivery store (the callbacks were dispatched anyway)."""

    @property
    def msg_keys(self) -> list[str]:
        """The MsgKeys of all :attr:`recalls`, in order."""
        return [key for event in self.recalls for key in event.msg_keys]


_captures = itertools.count(1)


def _recorder(function: Callable[..., None]) -> Callable[..., None]:
    # The store remembers which receivers (by module and qualname) already handled a message.
    # A capture is a new observer each time, so that a later block (a replay, say) sees what
    # is dispatched inside it rather than being skipped as "already done".
    function.__qualname__ = f"capture[{next(_captures)}]"
    return function


@contextmanager
def capture(app: Flask) -> Iterator[Captured]:
    """Collect everything ``app`` emits inside the block: recalls, callbacks, rejections,
    receiver failures and store failures.

    The recorders are ordinary receivers of ``app`` only, connected for the block.
    """
    seen = Captured()

    @_recorder
    def on_recall(sender: Flask, event: RecallEvent, **_: Any) -> None:
        seen.recalls.append(event)

    @_recorder
    def on_callback(sender: Flask, callback: Callback, **_: Any) -> None:
        seen.callbacks.append(callback)

    def on_rejected(sender: Flask, reason: str, error_code: int, status: int, **_: Any) -> None:
        seen.rejections.append(Rejected(reason, error_code, status))

    def on_failed(
        sender: Flask,
        receiver: str,
        signal_name: str,
        exception: BaseException,
        delivery_id: str,
        **_: Any,
    ) -> None:
        seen.failures.append(ReceiverFailure(receiver, signal_name, exception, delivery_id))

    def on_store_failed(sender: Flask, exception: BaseException, **_: Any) -> None:
        seen.store_failures.append(exception)

    with ExitStack() as stack:
        stack.enter_context(messages_recalled.connected_to(on_recall, app))
        stack.enter_context(callback_received.connected_to(on_callback, app))
        stack.enter_context(callback_rejected.connected_to(on_rejected, app))
        stack.enter_context(receiver_failed.connected_to(on_failed, app))
        stack.enter_context(store_failed.connected_to(on_store_failed, app))
        yield seen


@contextmanager
def capture_recalls(app: Flask) -> Iterator[list[RecallEvent]]:
    """Collect the :class:`RecallEvent` s that ``app`` emits inside the block."""
    events: list[RecallEvent] = []

    @_recorder
    def record(sender: Flask, event: RecallEvent, **_: Any) -> None:
        events.append(event)

    with messages_recalled.connected_to(record, app):
        yield events


@contextmanager
def capture_callbacks(app: Flask) -> Iterator[list[Callback]]:
    """Collect the :class:`Callback` s that ``app`` accepts inside the block."""
    callbacks: list[Callback] = []

    @_recorder
    def record(sender: Flask, callback: Callback, **_: Any) -> None:
        callbacks.append(callback)

    with callback_received.connected_to(record, app):
        yield callbacks
