"""What Tencent sends: callback bodies, the signed query string, and the route they go to.

Used by ``flask oa-recall send``, the OpenAPI description and ``check``, and re-exported by
:mod:`flask_oa_recall.testing` for tests. It reads the SdkAppid and first token from an app's
config through the extension's own parsing, so what it signs is what the app accepts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from flask import Flask
from werkzeug.routing import Rule

from .config import DEFAULTS, parse_settings
from .errors import ConfigError
from .events import (
    CREATE_COMMAND,
    DELETE_SUBSCRIBER_COMMAND,
    DESTROYED_COMMAND,
    FULL_COMMAND,
    INFO_CHANGED_COMMAND,
    RECALL_COMMAND,
)
from .security import sign
from .state import EXTENSION_KEY, OARecallState

__all__ = [
    "ADD_SUBSCRIBER_COMMAND",
    "BEFORE_ADD_SUBSCRIBER_COMMAND",
    "BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND",
    "BEFORE_SEND_MSG_COMMAND",
    "C2C_BEFORE_SEND_MSG_COMMAND",
    "DEFAULT_MSG_KEY",
    "DEFAULT_OFFICIAL_ACCOUNT",
    "GROUP_BEFORE_SEND_MSG_COMMAND",
    "SEND_MSG_COMMAND",
    "after_add_subscriber_body",
    "after_create_body",
    "after_delete_subscriber_body",
    "after_destroyed_body",
    "after_full_body",
    "after_info_changed_body",
    "after_send_msg_body",
    "before_add_subscriber_body",
    "before_callback_body",
    "before_create_official_account_body",
    "before_send_msg_body",
    "c2c_before_send_msg_body",
    "callback_body",
    "callback_path",
    "callback_rules",
    "group_before_send_msg_body",
    "recall_body",
    "signed_query",
    "typed_body",
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


# -- before-callbacks: what a decider is asked ---------------------------------------------------

#: ``OfficialAccount.CallbackBeforeCreateOfficialAccount``: an admin is about to create an account.
BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND = "OfficialAccount.CallbackBeforeCreateOfficialAccount"

#: ``OfficialAccount.CallbackBeforeAddSubscriber``: users are about to subscribe.
BEFORE_ADD_SUBSCRIBER_COMMAND = "OfficialAccount.CallbackBeforeAddSubscriber"

#: ``OfficialAccount.CallbackBeforeSendMsg``: an Official Account message is about to be sent.
BEFORE_SEND_MSG_COMMAND = "OfficialAccount.CallbackBeforeSendMsg"

#: ``C2C.CallbackBeforeSendMsg``: a one-to-one message is about to be sent.
C2C_BEFORE_SEND_MSG_COMMAND = "C2C.CallbackBeforeSendMsg"

#: ``Group.CallbackBeforeSendMsg``: a group message is about to be sent.
GROUP_BEFORE_SEND_MSG_COMMAND = "Group.CallbackBeforeSendMsg"


def _text_elements(text: str, msg_body: Sequence[Mapping[str, Any]] | None) -> list[Any]:
    if msg_body is not None:
        return [dict(element) for element in msg_body]
    return [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]


def before_create_official_account_body(
    name: str = "test",
    *,
    owner: str = "admin",
    operator: str = "admin",
    **extra: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackBeforeCreateOfficialAccount`` body (no account id yet).

    :param name: the ``Name`` the account is to get.
    :param owner: ``Owner_Account``.
    :param operator: ``Operator_Account``, the admin calling the REST API.
    """
    return callback_body(
        BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND,
        Operator_Account=operator,
        Owner_Account=owner,
        Name=name,
        **extra,
    )


def before_add_subscriber_body(
    subscribers: Sequence[str] = ("user1",),
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    operator: str = "admin",
    **extra: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackBeforeAddSubscriber`` body for ``subscribers``.

    A decider may refuse some of them with ``Decision.allow(refused_subscribers=[...])``.
    """
    return callback_body(
        BEFORE_ADD_SUBSCRIBER_COMMAND,
        Official_Account=official_account,
        Operator_Account=operator,
        SubscribeAccountList=[{"Subscriber_Account": s} for s in subscribers],
        **extra,
    )


def before_send_msg_body(
    text: str = "hello",
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    online_only: bool = False,
    cloud_custom_data: str = "",
    msg_body: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackBeforeSendMsg`` body: one ``TIMTextElem`` of ``text``, or
    the elements of ``msg_body``."""
    return callback_body(
        BEFORE_SEND_MSG_COMMAND,
        Official_Account=official_account,
        OnlineOnlyFlag=int(online_only),
        MsgBody=_text_elements(text, msg_body),
        CloudCustomData=cloud_custom_data,
        **extra,
    )


def c2c_before_send_msg_body(
    text: str = "hello",
    *,
    from_account: str = "user1",
    to_account: str = "user2",
    msg_seq: int = 48374,
    msg_random: int = 2837546,
    msg_time: int | None = None,
    online_only: bool = False,
    cloud_custom_data: str = "",
    msg_body: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``C2C.CallbackBeforeSendMsg`` body: ``from_account`` writes ``text`` to ``to_account``.

    ``MsgKey`` is ``MsgSeq_MsgRandom_MsgTime``, as Tencent forms it.
    """
    sent = int(time.time()) if msg_time is None else msg_time
    return callback_body(
        C2C_BEFORE_SEND_MSG_COMMAND,
        From_Account=from_account,
        To_Account=to_account,
        MsgSeq=msg_seq,
        MsgRandom=msg_random,
        MsgTime=sent,
        MsgKey=f"{msg_seq}_{msg_random}_{sent}",
        OnlineOnlyFlag=int(online_only),
        MsgBody=_text_elements(text, msg_body),
        CloudCustomData=cloud_custom_data,
        **extra,
    )


def group_before_send_msg_body(
    text: str = "hello",
    *,
    group_id: str = "@TGS#_test",
    group_type: str = "Public",
    from_account: str = "user1",
    operator: str | None = None,
    random: int = 123456,
    online_only: bool = False,
    cloud_custom_data: str = "",
    msg_body: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``Group.CallbackBeforeSendMsg`` body: ``from_account`` writes ``text`` to ``group_id``.

    :param operator: ``Operator_Account``; ``from_account`` by default.
    """
    return callback_body(
        GROUP_BEFORE_SEND_MSG_COMMAND,
        GroupId=group_id,
        Type=group_type,
        From_Account=from_account,
        Operator_Account=operator or from_account,
        Random=random,
        OnlineOnlyFlag=int(online_only),
        MsgBody=_text_elements(text, msg_body),
        CloudCustomData=cloud_custom_data,
        **extra,
    )


def before_callback_body(
    command: str,
    *,
    text: str = "hello",
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    subscribers: Sequence[str] = ("user1",),
) -> dict[str, Any]:
    """A body for any before-command, as ``flask oa-recall send --command`` sends it: the
    builder above for the five it knows; for another command ``From_Account`` and a
    ``MsgBody`` of ``text`` (enough for a decider to read).

    :param text: the message's text; the account's ``Name`` for
        ``OfficialAccount.CallbackBeforeCreateOfficialAccount``.
    :param official_account: ``Official_Account``, for the Official Account commands.
    :param subscribers: the users about to subscribe, for
        ``OfficialAccount.CallbackBeforeAddSubscriber``.
    """
    if command == BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND:
        return before_create_official_account_body(text)
    if command == BEFORE_ADD_SUBSCRIBER_COMMAND:
        return before_add_subscriber_body(subscribers, official_account=official_account)
    if command == BEFORE_SEND_MSG_COMMAND:
        return before_send_msg_body(text, official_account=official_account)
    if command == C2C_BEFORE_SEND_MSG_COMMAND:
        return c2c_before_send_msg_body(text)
    if command == GROUP_BEFORE_SEND_MSG_COMMAND:
        return group_before_send_msg_body(text)
    return callback_body(command, From_Account="user1", MsgBody=_text_elements(text, None))


def after_create_body(
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    operator: str = "admin",
    owner: str = "admin",
    name: str = "Test channel",
    **extra: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackAfterCreateOfficialAccount`` body."""
    return callback_body(
        CREATE_COMMAND,
        Official_Account=official_account,
        Operator_Account=operator,
        Owner_Account=owner,
        Name=name,
        **extra,
    )


def after_info_changed_body(
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    operator: str = "admin",
    **changed: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackAfterOfficialAccountInfoChanged`` body.

    :param changed: the changed profile fields by wire name (``Name``, ``Introduction``,
        ``FaceUrl``, ``Organization``); ``Introduction`` when none is given.
    """
    fields = changed or {"Introduction": "Changed."}
    return callback_body(
        INFO_CHANGED_COMMAND,
        Official_Account=official_account,
        Operator_Account=operator,
        **fields,
    )


def after_destroyed_body(
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    owner: str = "admin",
    name: str = "Test channel",
    **extra: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackAfterOfficialAccountDestroyed`` body."""
    return callback_body(
        DESTROYED_COMMAND,
        Official_Account=official_account,
        Owner_Account=owner,
        Name=name,
        **extra,
    )


def after_delete_subscriber_body(
    subscribers: Sequence[str],
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    operator: str = "admin",
    **extra: Any,
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackAfterDeleteSubscriber`` body for ``subscribers``."""
    return callback_body(
        DELETE_SUBSCRIBER_COMMAND,
        Official_Account=official_account,
        Operator_Account=operator,
        SubscribeAccountList=[{"Subscriber_Account": s} for s in subscribers],
        **extra,
    )


def after_full_body(
    *, official_account: str = DEFAULT_OFFICIAL_ACCOUNT, **extra: Any
) -> dict[str, Any]:
    """An ``OfficialAccount.CallbackAfterOfficialAccountFull`` body."""
    return callback_body(FULL_COMMAND, Official_Account=official_account, **extra)


def typed_body(
    command: str,
    *,
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    msg_key: str = DEFAULT_MSG_KEY,
    text: str = "hello",
) -> dict[str, Any]:
    """A realistic body for any typed Official Account "after" command (the recall included),
    with the fields Tencent documents for it; ``msg_key`` and ``text`` go where the command has
    them.

    :raises KeyError: if ``command`` is not a typed command.
    """
    builders: dict[str, Any] = {
        RECALL_COMMAND: lambda: recall_body([msg_key], official_account=official_account),
        SEND_MSG_COMMAND: lambda: after_send_msg_body(
            msg_key, official_account=official_account, text=text
        ),
        CREATE_COMMAND: lambda: after_create_body(official_account=official_account),
        INFO_CHANGED_COMMAND: lambda: after_info_changed_body(official_account=official_account),
        DESTROYED_COMMAND: lambda: after_destroyed_body(official_account=official_account),
        ADD_SUBSCRIBER_COMMAND: lambda: after_add_subscriber_body(
            ["user1"], official_account=official_account
        ),
        DELETE_SUBSCRIBER_COMMAND: lambda: after_delete_subscriber_body(
            ["user1"], official_account=official_account
        ),
        FULL_COMMAND: lambda: after_full_body(official_account=official_account),
    }
    body: dict[str, Any] = builders[command]()
    return body


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
    :raises ~flask_oa_recall.ConfigError: if no SdkAppid is known (a
        :class:`ValueError` too).
    """
    default_id, default_token = _config_defaults(app)
    sdk_app_id = sdk_app_id if sdk_app_id is not None else default_id
    if sdk_app_id is None:
        raise ConfigError(
            "OA_RECALL_SDKAPPID", "signed_query needs an SdkAppid: pass app= or sdk_app_id=."
        )
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


def callback_rules(app: Flask) -> list[Rule]:
    """The URL rules of ``app`` that serve the callback view, in the order they were added.

    Empty if the extension is not set up on ``app``.
    """
    state = app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, OARecallState):
        return []
    endpoints = state.callback_endpoints
    return [rule for rule in app.url_map.iter_rules() if rule.endpoint in endpoints]


def callback_path(app: Flask) -> str:
    """The path of ``app``'s callback route, read from ``app.url_map``.

    Follows a ``url_prefix`` given to :func:`~flask_oa_recall.create_blueprint`; falls back to
    ``OA_RECALL_PATH`` if no route serves the callback.
    """
    rules = callback_rules(app)
    if rules:
        return rules[0].rule
    path: str = app.config.get("OA_RECALL_PATH", DEFAULTS["OA_RECALL_PATH"])
    return path
