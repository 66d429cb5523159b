"""Security cases: how Sign is compared, where the token never shows up, and what a signed URL
(stale, future, malformed, replayed, of another app) can and cannot do.

The replay window is a documented limit, shown here rather than hidden: ``Sign`` covers only
the token and ``RequestTime``, so inside the window a captured signed URL carries *any* body.
A redelivered body is acknowledged and not dispatched again (dedup is on the message); a new
body is accepted and dispatched.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask

from flask_oa_recall import callback_rejected, messages_recalled
from flask_oa_recall.events import RECALL_COMMAND
from flask_oa_recall.testing import capture_recalls, recall_body, sign

from .conftest import SDK_APP_ID, AppFactory

PATH = "/tencent-im/callback"
SECRET = "tok-SECRET-9f8e7d6c5b4a"
OLD_SECRET = "tok-OLD-SECRET-1a2b3c4d"
OTHER_APP_ID = 1400000042
OTHER_SECRET = "tok-OTHER-APP-0f0e0d0c"
FOREIGN_APP_ID = 1400000001
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


def query(
    *,
    sdk_app_id: int | str = SDK_APP_ID,
    token: str | None = SECRET,
    request_time: int | str | None = None,
    signature: str | None = None,
    **extra: str,
) -> str:
    """A query string; ``signature`` overrides the computed Sign."""
    params: dict[str, str] = {"SdkAppid": str(sdk_app_id), "CallbackCommand": RECALL_COMMAND}
    when = str(int(time.time())) if request_time is None else str(request_time)
    if token is not None or signature is not None:
        params["Sign"] = signature if signature is not None else sign(token or "", when)
        params["RequestTime"] = when
    params.update(extra)
    return urlencode(params)


def body(*keys: str) -> bytes:
    return json.dumps(recall_body(keys or ("71_1_1698741698",))).encode()


@pytest.fixture
def secured(make_app: AppFactory) -> Flask:
    """Two tokens (rotation) for our SdkAppid, and another app of ours with its own token."""
    return make_app(
        sdkappid=[SDK_APP_ID, OTHER_APP_ID],
        tokens={SDK_APP_ID: [OLD_SECRET, SECRET], OTHER_APP_ID: [OTHER_SECRET]},
    )


@pytest.fixture
def rejected(secured: Flask) -> Iterator[list[str]]:
    reasons: list[str] = []

    def record(sender: Flask, reason: str, **_: Any) -> None:
        reasons.append(reason)

    with callback_rejected.connected_to(record, secured):
        yield reasons


def post(app: Flask, qs: str, data: bytes) -> tuple[int, dict[str, Any]]:
    response = app.test_client().post(f"{PATH}?{qs}", data=data)
    envelope = json.loads(response.data)
    assert set(envelope) == {"ActionStatus", "ErrorCode", "ErrorInfo"}
    return response.status_code, envelope


# --- constant-time comparison ------------------------------------------------------------------


class CompareSpy:
    """Stands in for ``hmac.compare_digest``, records each call and delegates to the real one."""

    def __init__(self) -> None:
        self.real = hmac.compare_digest
        self.calls: list[tuple[bytes, bytes]] = []

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls.append((a, b))
        return self.real(a, b)


@pytest.fixture
def compare_spy(monkeypatch: pytest.MonkeyPatch) -> CompareSpy:
    spy = CompareSpy()
    monkeypatch.setattr("flask_oa_recall.security.hmac.compare_digest", spy)
    return spy


@pytest.mark.parametrize(
    ("signature", "status"),
    [
        pytest.param(None, 200, id="right-sign"),
        pytest.param("0" * 64, 401, id="wrong-sign"),
        pytest.param("short", 401, id="short-sign"),
    ],
)
def test_sign_is_compared_with_compare_digest_against_every_token(
    secured: Flask, compare_spy: CompareSpy, signature: str | None, status: int
) -> None:
    """Every configured token of the SdkAppid is compared with ``hmac.compare_digest``, also
    after one matched, so the time taken says nothing about which token or how much matched."""
    when = str(int(time.time()))
    got, _ = post(secured, query(request_time=when, signature=signature), body())
    assert got == status
    expected = {sign(OLD_SECRET, when).encode(), sign(SECRET, when).encode()}
    assert len(compare_spy.calls) == 2
    assert {a for a, _ in compare_spy.calls} == expected
    given = (signature or sign(SECRET, when)).encode()
    assert {b for _, b in compare_spy.calls} == {given}


def test_a_request_that_fails_before_the_sign_compares_nothing(
    secured: Flask, compare_spy: CompareSpy
) -> None:
    status, envelope = post(secured, query(sdk_app_id=FOREIGN_APP_ID), body())
    assert (status, envelope["ErrorCode"]) == (403, 40302)
    assert compare_spy.calls == []


# --- the token never shows up ------------------------------------------------------------------


def test_token_and_sign_appear_in_no_response_log_record_store_or_cli_output(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Drive every path that logs or answers (accepted, duplicate, each rejection, a receiver
    that raises, a replay), then search responses, every log record at DEBUG, the SQLite file
    and the CLI's output for the tokens and the Signs that were sent."""
    app = make_app(store=None, tokens=[OLD_SECRET, SECRET])
    caplog.set_level(logging.DEBUG)
    sent_signs: set[str] = set()
    responses: list[bytes] = []

    def failing(sender: Flask, event: Any, **_: Any) -> None:
        raise RuntimeError(f"mirror database down for {event.msg_keys[0]}")

    def send(qs: str, data: bytes) -> None:
        for pair in qs.split("&"):
            if pair.startswith("Sign="):
                sent_signs.add(pair[5:])
        responses.append(app.test_client().post(f"{PATH}?{qs}", data=data).data)

    now = int(time.time())
    with messages_recalled.connected_to(failing, app):
        send(query(), body("k-fails"))
    send(query(), body("k-ok"))
    send(query(), body("k-ok"))  # a duplicate
    send(query(token=OLD_SECRET), body("k-old-token"))
    send(query(signature=sign(SECRET, now).upper()), body("k-upper"))
    send(query(token="not-the-token"), body("k-wrong"))
    send(query(request_time=now - 3600), body("k-stale"))
    send(query(request_time=now + 3600), body("k-future"))
    send(query(request_time="abc", signature=sign(SECRET, "abc")), body("k-malformed"))
    send(query(token=None), body("k-unsigned"))
    send(query(sdk_app_id=FOREIGN_APP_ID), body("k-foreign"))
    send(query(), b"{not json")
    send(query() + "&sign=x", body("k-ambiguous"))
    send(query(), b'{"CallbackCommand": "' + RECALL_COMMAND.encode() + b'"}')

    runner = app.test_cli_runner()
    outputs = []
    with messages_recalled.connected_to(lambda sender, event, **_: None, app):
        for args in (
            ["deliveries"],
            ["deliveries", "--json"],
            ["deliveries", "--failed", "--json"],
            ["replay", "--failed"],
            ["deliveries", "--json", "--limit", "100"],
        ):
            result = runner.invoke(args=["oa-recall", *args])
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                args,
                result.output,
            )
            outputs.append(result.output)
    if "check" in app.cli.commands["oa-recall"].commands:  # type: ignore[attr-defined]
        outputs.append(runner.invoke(args=["oa-recall", "check"]).output)

    assert any("k-fails" in o for o in outputs), "the CLI listed nothing"
    assert len(sent_signs) >= 5  # Signs made in the same second by one token are equal
    secrets = {SECRET, OLD_SECRET, *sent_signs, *(s.lower() for s in sent_signs)}
    records = [
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''} {r.args!r}"
        for r in caplog.records
    ]
    assert len(records) >= 10
    # The SQLite file and its write-ahead log: what was kept, byte for byte.
    stored = b"".join(p.read_bytes() for p in Path(app.instance_path).glob("oa_recall.sqlite3*"))
    assert b"k-fails" in stored
    for secret in secrets:
        for response in responses:
            assert secret.encode() not in response
        for record in records:
            assert secret not in record, record
        for output in outputs:
            assert secret not in output
        assert secret.encode() not in stored


# --- stale, future, malformed, unsigned --------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "status", "code"),
    [
        pytest.param(-3600, 401, 40103, id="an-hour-old"),
        pytest.param(-120, 401, 40103, id="two-minutes-old"),
        pytest.param(+120, 401, 40103, id="two-minutes-ahead"),
        pytest.param(+3600 * 24, 401, 40103, id="a-day-ahead"),
        pytest.param(-20, 200, 0, id="twenty-seconds-old"),
        pytest.param(+20, 200, 0, id="twenty-seconds-ahead"),
    ],
)
def test_request_time_must_be_inside_the_window_both_ways(
    secured: Flask, rejected: list[str], offset: int, status: int, code: int
) -> None:
    when = int(time.time()) + offset
    got, envelope = post(secured, query(request_time=when), body(f"k{offset}"))
    assert (got, envelope["ErrorCode"]) == (status, code)
    if status != 200:
        assert rejected == ["stale_request"]
        assert envelope["ErrorInfo"] == "RequestTime is outside the allowed window."


@pytest.mark.parametrize(
    "request_time",
    [
        "abc",
        "-5",
        "1e9",
        "1.5",
        "\uff11\uff17" + "\uff10" * 8,
        "17000000000000",
        " 1700000000",
        "0x10",
    ],
    ids=["letters", "negative", "exponent", "decimal", "fullwidth", "milliseconds", "space", "hex"],
)
def test_malformed_request_time_is_a_401(
    secured: Flask, rejected: list[str], request_time: str
) -> None:
    qs = query(request_time=request_time, signature=sign(SECRET, request_time))
    status, envelope = post(secured, qs, body())
    assert (status, envelope["ErrorCode"]) == (401, 40104)
    assert rejected == ["malformed_request_time"]


@pytest.mark.parametrize(
    "signature",
    ["", "zz" * 32, "é" * 64, "0" * 63, "0" * 65, "%00"],
    ids=["empty", "not-hex", "non-ascii", "63-chars", "65-chars", "nul"],
)
def test_malformed_sign_is_a_401(secured: Flask, signature: str) -> None:
    status, envelope = post(secured, query(signature=signature), body())
    assert status == 401
    assert envelope["ErrorCode"] in (40101, 40102)


@pytest.mark.parametrize(
    "transform", [str.upper, str.lower, str.strip], ids=["upper", "lower", "as-is"]
)
def test_sign_in_upper_or_lower_case_is_accepted(secured: Flask, transform: Any) -> None:
    when = str(int(time.time()))
    qs = query(request_time=when, signature=transform(sign(SECRET, when)))
    assert post(secured, qs, body()) == (200, OK)


@pytest.mark.parametrize(
    "qs",
    [
        pytest.param(lambda: query(token=None), id="no-sign-no-time"),
        pytest.param(lambda: query(token=None, RequestTime=str(int(time.time()))), id="time-only"),
        pytest.param(
            lambda: query(token=None, Sign=sign(SECRET, int(time.time()))), id="sign-only"
        ),
    ],
)
def test_unsigned_request_is_a_401_when_a_token_is_configured(
    secured: Flask, rejected: list[str], qs: Any
) -> None:
    with capture_recalls(secured) as events:
        status, envelope = post(secured, qs(), body())
    assert (status, envelope["ErrorCode"]) == (401, 40101)
    assert envelope["ErrorInfo"] == "Sign and RequestTime are required."
    assert rejected == ["missing_signature"]
    assert events == []


# --- tokens per SdkAppid (dict form) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("sdk_app_id", "token", "status", "code"),
    [
        pytest.param(SDK_APP_ID, SECRET, 200, 0, id="ours-with-our-token"),
        pytest.param(SDK_APP_ID, OLD_SECRET, 200, 0, id="ours-with-the-old-token"),
        pytest.param(OTHER_APP_ID, OTHER_SECRET, 200, 0, id="other-with-its-token"),
        pytest.param(SDK_APP_ID, OTHER_SECRET, 401, 40102, id="ours-with-the-other-apps-token"),
        pytest.param(OTHER_APP_ID, SECRET, 401, 40102, id="other-with-our-token"),
        pytest.param(FOREIGN_APP_ID, SECRET, 403, 40302, id="foreign-with-our-token"),
    ],
)
def test_each_sdkappid_accepts_only_its_own_tokens(
    secured: Flask, sdk_app_id: int, token: str, status: int, code: int
) -> None:
    with capture_recalls(secured) as events:
        got, envelope = post(
            secured, query(sdk_app_id=sdk_app_id, token=token), body(f"k-{token}-{sdk_app_id}")
        )
    assert (got, envelope["ErrorCode"]) == (status, code)
    assert len(events) == (1 if status == 200 else 0)
    if status == 200:
        assert events[0].sdk_app_id == sdk_app_id


# --- a replayed signed URL ---------------------------------------------------------------------


def test_replayed_url_with_the_same_body_is_acknowledged_not_dispatched_again(
    secured: Flask,
) -> None:
    qs = query()
    with capture_recalls(secured) as events:
        first = post(secured, qs, body("71_1_1698741698"))
        second = post(secured, qs, body("71_1_1698741698"))
    assert first == second == (200, OK)
    assert [e.msg_keys for e in events] == [("71_1_1698741698",)]


def test_replayed_url_with_a_new_body_is_accepted_inside_the_window(secured: Flask) -> None:
    """The documented limit: Sign does not cover the body. Whoever captured one signed URL can
    recall *other* messages with it until RequestTime leaves the window (60 s by default).
    HTTPS keeps URLs from being captured; a short OA_RECALL_MAX_SKEW_SECONDS narrows the rest."""
    qs = query()
    with capture_recalls(secured) as events:
        assert post(secured, qs, body("71_1_1698741698")) == (200, OK)
        assert post(secured, qs, body("99_1_1698749999")) == (200, OK)
    assert [e.msg_keys for e in events] == [("71_1_1698741698",), ("99_1_1698749999",)]


def test_replayed_url_after_the_window_is_refused(secured: Flask) -> None:
    stale = query(request_time=int(time.time()) - 61)
    with capture_recalls(secured) as events:
        status, envelope = post(secured, stale, body("99_1_1698749999"))
    assert (status, envelope["ErrorCode"]) == (401, 40103)
    assert events == []


def test_a_smaller_window_is_honoured(make_app: AppFactory) -> None:
    app = make_app(max_skew_seconds=5, tokens=[SECRET])
    status, envelope = post(app, query(request_time=int(time.time()) - 30), body())
    assert (status, envelope["ErrorCode"]) == (401, 40103)
