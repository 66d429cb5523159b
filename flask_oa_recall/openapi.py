"""An OpenAPI 3.1 description of an app's callback endpoint, built from the marshmallow schemas.

Needs the ``openapi`` extra (``pip install 'flask-oa-recall[openapi]'``), which brings apispec;
``flask oa-recall openapi`` prints it. The description follows the app's config: its path, its
SdkAppids, whether ``Sign``/``RequestTime`` are required, and every documented rejection with its
``ErrorCode``. It describes the recall's body and the typed Official Account bodies
(:mod:`flask_oa_recall.kinds`), and the answers to before-callbacks.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from flask import Flask

from .config import Settings
from .decisions import CUSTOM_DENY_CODES
from .errors import MissingDependency
from .events import RECALL_COMMAND
from .kinds import KINDS, short_command
from .payloads import callback_path
from .responses import REJECTIONS, Rejection
from .schemas import (
    MAX_EVENT_TIME_MS,
    EventTimeField,
    LenientFlag,
    LenientInteger,
    LenientObjects,
    LenientString,
    SubscriberListField,
)
from .state import get_state

__all__ = ["OPENAPI_VERSION", "build_spec"]

#: The OpenAPI version of :func:`build_spec`'s document.
OPENAPI_VERSION = "3.1.0"

_POST_STATUSES = (400, 401, 403, 413, 503)
_OTHER_METHODS = ("get", "put", "patch", "delete")

_EVENT_TIME_VALUE = 1670574414123

#: One realistic sample body per typed command (field lists from Tencent's pages).
SAMPLES: dict[str, dict[str, Any]] = {
    RECALL_COMMAND: {
        "Official_Account": "#TOA#_123",
        "WithdrawMsgList": [{"MsgKey": "71_1_1698741698"}],
    },
    "OfficialAccount.CallbackAfterSendMsg": {
        "Official_Account": "@TOA#_123",
        "MsgKey": "71_1_1698741698",
        "MsgTime": 1698741698,
        "OnlineOnlyFlag": 0,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hello"}}],
        "CloudCustomData": "",
    },
    "OfficialAccount.CallbackAfterCreateOfficialAccount": {
        "Official_Account": "@TOA#_123",
        "Operator_Account": "admin",
        "Owner_Account": "owner1",
        "Name": "News",
    },
    "OfficialAccount.CallbackAfterOfficialAccountInfoChanged": {
        "Official_Account": "@TOA#_123",
        "Operator_Account": "admin",
        "Name": "Daily News",
        "Introduction": "News, daily.",
    },
    "OfficialAccount.CallbackAfterOfficialAccountDestroyed": {
        "Official_Account": "@TOA#_123",
        "Owner_Account": "owner1",
        "Name": "News",
    },
    "OfficialAccount.CallbackAfterAddSubscriber": {
        "Official_Account": "@TOA#_123",
        "Operator_Account": "admin",
        "SubscribeAccountList": [{"Subscriber_Account": "user1"}],
    },
    "OfficialAccount.CallbackAfterDeleteSubscriber": {
        "Official_Account": "@TOA#_123",
        "Operator_Account": "user1",
        "SubscribeAccountList": [{"Subscriber_Account": "user1"}],
    },
    "OfficialAccount.CallbackAfterOfficialAccountFull": {"Official_Account": "@TOA#_123"},
}

_EVENT_TIME = {
    "description": "When the event fired, in Unix milliseconds. Some of Tencent's samples send"
    " it as a string of digits; both are accepted.",
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_TIME_MS},
        {"type": "string", "pattern": "^[0-9]{1,15}$"},
    ],
}

_LENIENT = (
    " Optional; a value of another type is not refused: the event gets none (`None`, or an"
    " empty tuple) and the raw body keeps the value."
)

#: How the lenient fields look in JSON Schema (the type Tencent documents).
_LENIENT_FIELDS: tuple[tuple[type, dict[str, Any]], ...] = (
    (
        SubscriberListField,
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"Subscriber_Account": {"type": "string", "minLength": 1}},
                "additionalProperties": True,
            },
            "description": '`[{"Subscriber_Account": ...}]`.' + _LENIENT,
        },
    ),
    (
        LenientObjects,
        {
            "type": "array",
            "items": {"type": "object"},
            "description": "TIM message elements." + _LENIENT,
        },
    ),
    (LenientFlag, {"enum": [0, 1], "description": "0 or 1." + _LENIENT}),
    (LenientInteger, {"type": "integer", "minimum": 0, "description": "Seconds." + _LENIENT}),
    (LenientString, {"type": "string", "description": _LENIENT.strip()}),
)


def _field_property(self: Any, field: Any, **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: how this package's own fields look in JSON Schema."""
    if isinstance(field, EventTimeField):
        return dict(_EVENT_TIME)
    for field_type, schema in _LENIENT_FIELDS:
        if isinstance(field, field_type):
            return dict(schema)
    return {}


def _envelope(status: str, code: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ActionStatus", "ErrorCode", "ErrorInfo"],
        "additionalProperties": False,
        "properties": {
            "ActionStatus": {"const": status},
            "ErrorCode": {"type": "integer", **code},
            "ErrorInfo": {"type": "string", **info},
        },
    }


def _rejection_response(status: int, rejections: list[Rejection]) -> dict[str, Any]:
    lines = "\n".join(f"- `{r.error_code}` `{r.reason}`: {r.info}" for r in rejections)
    codes = [r.error_code for r in rejections]
    response: dict[str, Any] = {
        "description": f"Rejected (`FAIL`). `ErrorCode` and reason:\n\n{lines}",
        "content": {
            "application/json": {
                "schema": _envelope("FAIL", {"enum": codes}, {"minLength": 1}),
                "example": {
                    "ActionStatus": "FAIL",
                    "ErrorCode": rejections[0].error_code,
                    "ErrorInfo": rejections[0].info,
                },
            }
        },
        "x-oa-recall-reasons": [
            {"reason": r.reason, "ErrorCode": r.error_code, "ErrorInfo": r.info} for r in rejections
        ],
    }
    if status == 405:
        response["headers"] = {
            "Allow": {"description": "Always `POST`.", "schema": {"const": "POST"}}
        }
    return response


def _query(
    name: str, description: str, schema: dict[str, Any], required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _parameters(sdk_app_ids: list[int], signed: bool, skew: float) -> list[dict[str, Any]]:
    sign_note = (
        "Required: this app checks signatures."
        if signed
        else "Ignored: no token is configured, authentication is off."
    )
    return [
        _query(
            "SdkAppid",
            "The app's SDKAppID. Any other value is refused with 403.",
            {"type": "integer", "enum": sdk_app_ids},
            required=True,
        ),
        _query(
            "CallbackCommand",
            "The callback command; Tencent sends it on every callback. When absent, the body's"
            " is used; when both are present they must agree (400, `command_mismatch`).",
            {"type": "string", "minLength": 1, "examples": [RECALL_COMMAND]},
        ),
        _query(
            "contenttype", "Always `json` (any case).", {"type": "string", "examples": ["json"]}
        ),
        _query(
            "ClientIP",
            "The end user's IP address (not Tencent's); absent on some callbacks.",
            {"type": "string"},
        ),
        _query(
            "OptPlatform",
            "The client platform that caused the event: `RESTAPI`, `Web`, `Android`, `iOS`,"
            " `IOS`, `Mac`, `macOS`, ...; any value is accepted.",
            {"type": "string", "examples": ["RESTAPI", "iOS", "Android"]},
        ),
        _query(
            "Sign",
            "`sha256(token + RequestTime)` as hexadecimal, for any token configured for the"
            f" SdkAppid. {sign_note}",
            {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
            required=signed,
        ),
        _query(
            "RequestTime",
            f"Unix seconds; must be within {skew:g} s of the server's clock. {sign_note}",
            {"type": "integer", "minimum": 0, "maximum": 999_999_999_999},
            required=signed,
        ),
    ]


def _schema_name(command: str) -> str:
    """``RecallBody`` for the recall (its name before the other commands were typed), else
    ``<short command>Body``."""
    return "RecallBody" if command == RECALL_COMMAND else f"{short_command(command)}Body"


def _body_schemas(spec: Any) -> list[dict[str, str]]:
    """Add the request body schemas; return the ``anyOf`` list of references to them."""
    names = []
    for kind in KINDS.values():
        name = _schema_name(kind.command)
        spec.components.schema(name, schema=type(kind.schema))
        names.append(name)
    spec.components.schema(
        "OtherCallback",
        {
            "description": "Any other command: authenticated, acknowledged and offered to the"
            " app's `callback_received` receivers (kept when something listens, see the keep"
            " policy). A before-command (`…CallbackBefore…`) is answered by its decider.",
            "type": "object",
            "properties": {
                "CallbackCommand": {
                    "type": "string",
                    "minLength": 1,
                    "not": {"enum": sorted(KINDS)},
                },
                "EventTime": _EVENT_TIME,
            },
            "additionalProperties": True,
        },
    )
    return [{"$ref": f"#/components/schemas/{name}"} for name in [*names, "OtherCallback"]]


def _answer_schemas(spec: Any) -> None:
    """The OK envelope, and the answer to a before-callback (a decider's ``Decision``)."""
    spec.components.schema("OkEnvelope", _envelope("OK", {"const": 0}, {"const": ""}))
    deny = {"minimum": CUSTOM_DENY_CODES.start, "maximum": CUSTOM_DENY_CODES.stop - 1}
    spec.components.schema(
        "DecisionAnswer",
        {
            "description": "The answer to a before-callback (`…CallbackBefore…`), from the"
            " app's decider: `ErrorCode` 0 allows (optionally replacing `MsgBody` /"
            " `CloudCustomData`, or refusing some subscribers), 1 or a code in"
            " [120001, 130000] denies (Tencent passes such a code and `ErrorInfo` on to the"
            " client), 2 drops a message silently. The fields go with 0 only.",
            "type": "object",
            "required": ["ActionStatus", "ErrorCode", "ErrorInfo"],
            "additionalProperties": False,
            "properties": {
                "ActionStatus": {"const": "OK"},
                "ErrorCode": {
                    "oneOf": [{"enum": [0, 1, 2]}, {"type": "integer", **deny}],
                },
                "ErrorInfo": {"type": "string"},
                "MsgBody": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["MsgType", "MsgContent"],
                        "properties": {
                            "MsgType": {"type": "string", "minLength": 1},
                            "MsgContent": {"type": "object"},
                        },
                    },
                    "description": "Replaces the message's elements (before-send, allow only).",
                },
                "CloudCustomData": {
                    "type": "string",
                    "description": "Replaces the message's CloudCustomData (allow only).",
                },
                "RefusedSubscribers_Account": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "description": "The users refused by"
                    " `OfficialAccount.CallbackBeforeAddSubscriber` (allow only).",
                },
            },
        },
    )


def _rejections(spec: Any) -> dict[int, list[Rejection]]:
    """Add one response per rejection status; return the rejections by status."""
    by_status: dict[int, list[Rejection]] = {}
    for rejection in REJECTIONS.values():
        by_status.setdefault(rejection.status, []).append(rejection)
    for status, rejections in sorted(by_status.items()):
        spec.components.response(f"Rejected{status}", _rejection_response(status, rejections))
    return by_status


def _ref(status: int) -> dict[str, str]:
    return {"$ref": f"#/components/responses/Rejected{status}"}


def _examples() -> dict[str, dict[str, Any]]:
    examples = {
        short_command(command): {
            "summary": f"{command} (Tencent's sample)" if command == RECALL_COMMAND else command,
            "value": {"CallbackCommand": command, **fields, "EventTime": _EVENT_TIME_VALUE},
        }
        for command, fields in SAMPLES.items()
    }
    examples["BeforeSendMsg"] = {
        "summary": "A before-callback, answered by the app's decider",
        "value": {
            "CallbackCommand": "OfficialAccount.CallbackBeforeSendMsg",
            "Official_Account": "@TOA#_123",
            "OnlineOnlyFlag": 0,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hello"}}],
            "CloudCustomData": "",
            "EventTime": _EVENT_TIME_VALUE,
        },
    }
    return examples


def _post(
    settings: Settings, body_refs: list[dict[str, str]], statuses: set[int]
) -> dict[str, Any]:
    """The POST operation."""
    return {
        "operationId": "receiveCallback",
        "summary": "Receive a Tencent Cloud Chat callback",
        "description": "Verify the SdkAppid and `Sign`, parse the body, then: answer a"
        " before-callback with the app's decider; load a typed Official Account body into its"
        " event; keep the delivery (the recall always, another command when something listens"
        " or the config says so), dispatch it to the app's receivers, answer. Tencent waits 2 s"
        " for the answer.",
        "parameters": _parameters(
            sorted(settings.sdk_app_ids), settings.authenticates, settings.max_skew_seconds
        ),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"anyOf": body_refs}, "examples": _examples()}
            },
        },
        "responses": {
            "200": {
                "description": "Accepted: dispatched (also when a receiver failed; a kept"
                " failure can be replayed with `flask oa-recall replay`), or a redelivery"
                " acknowledged without dispatching again. A before-callback gets its decider's"
                " answer (`DecisionAnswer`; `ErrorCode` 0 without a decider).",
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                {"$ref": "#/components/schemas/OkEnvelope"},
                                {"$ref": "#/components/schemas/DecisionAnswer"},
                            ]
                        },
                        "examples": {
                            "ok": {
                                "value": {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
                            },
                            "denied": {
                                "summary": "A decider's deny with a code for the client",
                                "value": {
                                    "ActionStatus": "OK",
                                    "ErrorCode": 120001,
                                    "ErrorInfo": "Blocked by moderation.",
                                },
                            },
                        },
                    }
                },
            },
            **{str(status): _ref(status) for status in _POST_STATUSES if status in statuses},
        },
    }


def _tidy(document: dict[str, Any]) -> dict[str, Any]:
    """Pin each typed body's ``CallbackCommand``; order the top-level keys."""
    schemas = document["components"]["schemas"]
    for kind in KINDS.values():
        body = schemas[_schema_name(kind.command)]
        # The schemas load any string; the view routes on the command.
        body["properties"]["CallbackCommand"] = {"type": "string", "const": kind.command}
        body["description"] = (
            f"`{kind.command}`, sent to receivers of `{kind.signal_name}` as a"
            f" `{kind.event_type.__name__}`. Unknown fields are kept, never refused."
        )
    order = ("openapi", "info", "servers", "paths", "components")
    return {**{key: document[key] for key in order if key in document}, **document}


def build_spec(app: Flask, *, server_url: str | None = None) -> dict[str, Any]:
    """Describe ``app``'s callback endpoint as an OpenAPI 3.1 document (a JSON-ready dict).

    :param app: an app with the extension set up; its config decides the details.
    :param server_url: the public base URL to list under ``servers``, if any.
    :raises ~flask_oa_recall.MissingDependency: if apispec (the ``openapi`` extra) is
        not installed (a :class:`RuntimeError` too).
    """
    try:
        from apispec import APISpec
        from apispec.ext.marshmallow import MarshmallowPlugin
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependency("openapi", "The OpenAPI description needs apispec") from err

    settings = get_state(app).settings(app.config)
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Tencent Cloud Chat callback",
        version=version("flask-oa-recall"),
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "The single webhook URL of a Tencent Cloud Chat app, served by"
            " flask-oa-recall. `OfficialAccount.CallbackAfterMsgWithDraw` (a recall) and the"
            " other Official Account after-commands are loaded into typed events and"
            " dispatched; before-callbacks are answered by the app's deciders; every other"
            " command is authenticated and acknowledged. Query parameter names are matched"
            " case-insensitively; a parameter repeated with different values is refused (400,"
            " `ambiguous_query`). The body is read as JSON whatever the Content-Type says, and"
            f" may be at most {settings.max_body_bytes} bytes (413 above).",
        },
        **({"servers": [{"url": server_url}]} if server_url else {}),
    )
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_field_property)  # type: ignore[no-untyped-call]

    body_refs = _body_schemas(spec)
    _answer_schemas(spec)
    by_status = _rejections(spec)
    operations: dict[str, Any] = {"post": _post(settings, body_refs, set(by_status))}
    for method in _OTHER_METHODS:
        operations[method] = {
            "operationId": f"{method}NotAllowed",
            "summary": "Not allowed: Tencent sends callbacks with POST",
            "responses": {"405": _ref(405)},
        }
    spec.path(
        path=callback_path(app),
        operations=operations,
        description="The callback URL to enter in the Chat console. Paths below it answer 404"
        " (`not_found`); methods other than POST (HEAD and OPTIONS too) answer 405.",
    )
    return _tidy(spec.to_dict())
