"""The response envelope Tencent expects, and the table of rejection reasons.

Every answer of the callback route is JSON with exactly ``ActionStatus``, ``ErrorCode`` and
``ErrorInfo``. Accepted callbacks get ``OK`` with ``ErrorCode`` 0; rejected ones get ``FAIL``, a
non-zero code from :data:`REJECTIONS` and a 4xx status. The codes are stable: they are part of the
public contract and may be matched by monitoring.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from flask import Response

__all__ = [
    "OK_BODY",
    "REJECTIONS",
    "Rejection",
    "answer_response",
    "envelope",
    "ok_response",
    "reject_response",
]


@dataclass(frozen=True)
class Rejection:
    """One documented reason to refuse a request.

    :param reason: stable machine-readable code, also passed as ``reason=`` to
        :data:`~flask_oa_recall.callback_rejected`.
    :param error_code: the ``ErrorCode`` in the response body.
    :param status: the HTTP status.
    :param info: the default ``ErrorInfo``; a more specific text may replace it.
    """

    reason: str
    error_code: int
    status: int
    info: str


_TABLE = (
    Rejection("malformed_body", 40001, 400, "The body is not a UTF-8 JSON object."),
    Rejection("invalid_payload", 40002, 400, "The body does not match the callback's schema."),
    Rejection(
        "command_mismatch", 40003, 400, "The body's CallbackCommand differs from the query's."
    ),
    Rejection("missing_command", 40004, 400, "The CallbackCommand query parameter is missing."),
    Rejection(
        "ambiguous_query",
        40005,
        400,
        "A query parameter was given more than once with different values.",
    ),
    Rejection("incomplete_body", 40006, 400, "The body ended before its declared length."),
    Rejection("missing_signature", 40101, 401, "Sign and RequestTime are required."),
    Rejection("bad_signature", 40102, 401, "Sign does not match any configured token."),
    Rejection("stale_request", 40103, 401, "RequestTime is outside the allowed window."),
    Rejection("malformed_request_time", 40104, 401, "RequestTime is not a Unix time in seconds."),
    Rejection("missing_sdkappid", 40301, 403, "The SdkAppid query parameter is missing."),
    Rejection("unknown_sdkappid", 40302, 403, "SdkAppid is not one of this app's."),
    Rejection("not_found", 40401, 404, "No callback route here; see OA_RECALL_PATH."),
    Rejection("method_not_allowed", 40501, 405, "Tencent sends callbacks with POST."),
    Rejection("body_too_large", 41301, 413, "The body is larger than OA_RECALL_MAX_BODY_BYTES."),
    Rejection(
        "delivery_not_kept",
        50301,
        503,
        "The delivery could not be kept and its receivers failed; send it again.",
    ),
)

#: Every rejection reason by its ``reason`` code.
REJECTIONS: MappingProxyType[str, Rejection] = MappingProxyType({r.reason: r for r in _TABLE})

#: The exact body of an accepted callback.
OK_BODY = b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'


def envelope(action_status: str, error_code: int, error_info: str) -> dict[str, object]:
    """Build the envelope as a dict, in Tencent's field order."""
    return {"ActionStatus": action_status, "ErrorCode": error_code, "ErrorInfo": error_info}


def ok_response() -> Response:
    """The ``OK`` answer: HTTP 200, ``ErrorCode`` 0."""
    return Response(OK_BODY, status=200, mimetype="application/json")


def answer_response(answer: Mapping[str, Any]) -> Response:
    """HTTP 200 with ``answer`` (a before-callback's decision: the envelope and its fields)."""
    body = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status=200, mimetype="application/json")


def reject_response(rejection: Rejection, info: str | None = None) -> Response:
    """The ``FAIL`` answer for ``rejection``, with ``info`` replacing its default text."""
    body = json.dumps(
        envelope("FAIL", rejection.error_code, info or rejection.info), separators=(",", ":")
    )
    response = Response(body, status=rejection.status, mimetype="application/json")
    if rejection.status == 405:
        response.headers["Allow"] = "POST"
    return response
