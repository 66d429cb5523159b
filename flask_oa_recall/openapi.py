"""An OpenAPI 3.1 description of an app's callback endpoint, built from the marshmallow schemas.

Needs the ``openapi`` extra (``pip install 'flask-oa-recall[openapi]'``), which brings apispec;
``flask oa-recall openapi`` prints it. The description follows the app's config: its path, its
SdkAppids, whether ``Sign``/``RequestTime`` are required, and every documented rejection with its
``ErrorCode``.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from flask import Flask

from .errors import MissingDependency
from .events import RECALL_COMMAND
from .payloads import callback_path
from .responses import REJECTIONS, Rejection
from .schemas import MAX_EVENT_TIME_MS, EventTimeField, RecallBodySchema
from .state import get_state

__all__ = ["OPENAPI_VERSION", "build_spec"]

#: The OpenAPI version of :func:`build_spec`'s document.
OPENAPI_VERSION = "3.1.0"

_POST_STATUSES = (400, 401, 403, 413, 503)
_OTHER_METHODS = ("get", "put", "patch", "delete")

_SEED_SAMPLE = {
    "CallbackCommand": RECALL_COMMAND,
    "Official_Account": "#TOA#_123",
    "WithdrawMsgList": [{"MsgKey": "71_1_1698741698"}],
    "EventTime": 1670574414123,
}

_EVENT_TIME = {
    "description": "When the event fired, in Unix milliseconds. Some of Tencent's samples send"
    " it as a string of digits; both are accepted.",
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_TIME_MS},
        {"type": "string", "pattern": "^[0-9]{1,15}$"},
    ],
}


def _event_time_property(self: Any, field: Any, **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: how :class:`EventTimeField` looks in JSON Schema."""
    return dict(_EVENT_TIME) if isinstance(field, EventTimeField) else {}


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


def build_spec(app: Flask, *, server_url: str | None = None) -> dict[str, Any]:
    """Describe ``app``'s callback endpoint as an OpenAPI 3.1 document (a JSON-ready dict).

    :param app: an app with the extension set up; its config decides the details.
    :param server_url: the public base URL to list under ``servers``, if any.
    :raises ~flask_oa_recall.errors.MissingDependency: if apispec (the ``openapi`` extra) is
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
            " flask-oa-recall. `OfficialAccount.CallbackAfterMsgWithDraw` (a recall) is loaded"
            " and dispatched; every other command is authenticated, kept and acknowledged."
            " Query parameter names are matched case-insensitively; a parameter repeated with"
            " different values is refused (400, `ambiguous_query`). The body is read as JSON"
            " whatever the Content-Type says, and may be at most"
            f" {settings.max_body_bytes} bytes (413 above).",
        },
        **({"servers": [{"url": server_url}]} if server_url else {}),
    )
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_event_time_property)  # type: ignore[no-untyped-call]

    spec.components.schema("RecallBody", schema=RecallBodySchema)
    spec.components.schema(
        "OtherCallback",
        {
            "description": "Any other command. Authenticated, kept and acknowledged with OK"
            " (`ErrorCode` 0, which also means \u201callow\u201d for before-callbacks).",
            "type": "object",
            "properties": {
                "CallbackCommand": {
                    "type": "string",
                    "minLength": 1,
                    "not": {"const": RECALL_COMMAND},
                },
                "EventTime": _EVENT_TIME,
            },
            "additionalProperties": True,
        },
    )
    spec.components.schema("OkEnvelope", _envelope("OK", {"const": 0}, {"const": ""}))

    by_status: dict[int, list[Rejection]] = {}
    for rejection in REJECTIONS.values():
        by_status.setdefault(rejection.status, []).append(rejection)
    for status, rejections in sorted(by_status.items()):
        spec.components.response(f"Rejected{status}", _rejection_response(status, rejections))

    def ref(status: int) -> dict[str, str]:
        return {"$ref": f"#/components/responses/Rejected{status}"}

    post = {
        "operationId": "receiveCallback",
        "summary": "Receive a Tencent Cloud Chat callback",
        "description": "Verify the SdkAppid and `Sign`, parse the body, keep the delivery,"
        " dispatch it to the app's receivers, answer. Tencent waits 2 s for the answer.",
        "parameters": _parameters(
            sorted(settings.sdk_app_ids), settings.authenticates, settings.max_skew_seconds
        ),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/RecallBody"},
                            {"$ref": "#/components/schemas/OtherCallback"},
                        ]
                    },
                    "examples": {
                        "recall": {
                            "summary": "Tencent's sample recall",
                            "value": _SEED_SAMPLE,
                        },
                        "afterSubscribe": {
                            "summary": "Another command, acknowledged",
                            "value": {
                                "CallbackCommand": "OfficialAccount.CallbackAfterAddSubscriber",
                                "Official_Account": "@TOA#_123",
                                "Operator_Account": "admin",
                                "SubscribeAccountList": [{"Subscriber_Account": "user1"}],
                                "EventTime": 1670574414123,
                            },
                        },
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": "Accepted: kept and dispatched (also when a receiver failed;"
                " the failure is kept for `flask oa-recall replay`), or a redelivery"
                " acknowledged without dispatching again.",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/OkEnvelope"},
                        "example": {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""},
                    }
                },
            },
            **{str(status): ref(status) for status in _POST_STATUSES if status in by_status},
        },
    }
    operations: dict[str, Any] = {"post": post}
    for method in _OTHER_METHODS:
        operations[method] = {
            "operationId": f"{method}NotAllowed",
            "summary": "Not allowed: Tencent sends callbacks with POST",
            "responses": {"405": ref(405)},
        }
    path = callback_path(app)
    spec.path(
        path=path,
        operations=operations,
        description="The callback URL to enter in the Chat console. Paths below it answer 404"
        " (`not_found`); methods other than POST (HEAD and OPTIONS too) answer 405.",
    )
    document: dict[str, Any] = spec.to_dict()
    # The schema loads any string; the view routes on the command, so only this one is a recall.
    recall = document["components"]["schemas"]["RecallBody"]
    recall["properties"]["CallbackCommand"] = {"type": "string", "const": RECALL_COMMAND}
    recall["description"] = (
        "`OfficialAccount.CallbackAfterMsgWithDraw`: messages of an Official Account were"
        " recalled. Unknown fields are kept, never refused."
    )
    order = ("openapi", "info", "servers", "paths", "components")
    return {**{key: document[key] for key in order if key in document}, **document}
