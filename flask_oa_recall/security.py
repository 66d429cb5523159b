"""Tencent's webhook authentication: ``Sign = sha256(token + RequestTime)``, and the query checks.

The Sign covers neither the body nor the rest of the URL: whoever holds one signed URL can send
any body with it until ``RequestTime`` leaves the window. See the README's security section.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence

from .errors import CallbackRejected

__all__ = [
    "QUERY_NAMES",
    "canonical_query",
    "check_sdk_app_id",
    "check_signature",
    "read_query",
    "sign",
]

#: The query parameters Tencent appends, by their lower-cased name.
QUERY_NAMES = {
    "sdkappid": "SdkAppid",
    "callbackcommand": "CallbackCommand",
    "contenttype": "contenttype",
    "clientip": "ClientIP",
    "optplatform": "OptPlatform",
    "sign": "Sign",
    "requesttime": "RequestTime",
}


def sign(token: str, request_time: str | int) -> str:
    """Compute Tencent's ``Sign`` for ``token`` at ``request_time`` (Unix seconds).

    >>> from flask_oa_recall.testing import sign
    >>> sign("xxxxyyyy", "1669872112")
    '17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061'
    """
    return hashlib.sha256(f"{token}{request_time}".encode()).hexdigest()


def canonical_query(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Map Tencent's parameters to their documented names, whatever case they were sent in.

    A parameter sent more than once (in any case) with the same value counts once; with
    different values the request is ambiguous and rejected, so that no copy can be used to slip
    past a check. Unknown parameters are ignored.
    """
    return read_query(pairs)[0]


def read_query(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """:func:`canonical_query`, and the query as kept with a delivery: every parameter but
    ``Sign`` (in any case), its first value, its name as sent. One pass over ``pairs``."""
    found: dict[str, str] = {}
    kept: dict[str, str] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered != "sign" and name not in kept:
            kept[name] = value
        canonical = QUERY_NAMES.get(lowered)
        if canonical is None:
            continue
        previous = found.get(canonical)
        if previous is not None and previous != value:
            raise CallbackRejected("ambiguous_query", f"{canonical} was given more than once.")
        found[canonical] = value
    return found, kept


def check_sdk_app_id(query: Mapping[str, str], allowed: frozenset[int]) -> int:
    """Return the request's SdkAppid if it is one of ``allowed``."""
    raw = query.get("SdkAppid")
    if raw is None or raw == "":
        raise CallbackRejected("missing_sdkappid")
    value = raw.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 20 and int(value) in allowed):
        raise CallbackRejected("unknown_sdkappid")
    return int(value)


def check_signature(
    query: Mapping[str, str], tokens: Sequence[str], now: float, max_skew: float
) -> None:
    """Check ``Sign`` against every token (for rotation) and ``RequestTime`` against the clock.

    Every token is compared, in constant time, whether or not an earlier one matched, so the
    time taken says nothing about which token or how much of the Sign was right.
    """
    signature = query.get("Sign")
    request_time = query.get("RequestTime")
    if not signature or not request_time:
        raise CallbackRejected("missing_signature")
    if not (request_time.isascii() and request_time.isdigit() and len(request_time) <= 12):
        raise CallbackRejected("malformed_request_time")
    if abs(now - int(request_time)) > max_skew:
        raise CallbackRejected("stale_request")
    given = signature.strip().lower().encode("ascii", "replace")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(sign(token, request_time).encode(), given)
    if not matched:
        raise CallbackRejected("bad_signature")
