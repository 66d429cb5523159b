"""The example app, served as the README serves it: ``gunicorn -c examples/gunicorn.conf.py``.

Real HTTP on 127.0.0.1 against three sync workers: the README's recall, then every error status
with its envelope, from outside the package.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_oa_recall import REJECTIONS
from flask_oa_recall.testing import after_send_msg_body, recall_body, sign

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "change-me"
APP_ID = 1400000000
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("example")
    port = free_port()
    env = {
        **os.environ,
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "3",
        "OA_RECALL_STORE": f"sqlite:///{tmp}/deliveries.sqlite3",
        "MIRROR_DATABASE": str(tmp / "mirror.sqlite3"),
        "MIRROR_BLOCKED_WORD": "forbidden",
    }
    log = (tmp / "gunicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "examples/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the example did not start:\n" + (tmp / "gunicorn.log").read_text()
                    ) from None
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def request(
    server: tuple[str, int], method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


def query(**overrides: str) -> str:
    t = str(int(time.time()))
    params = {
        "SdkAppid": str(APP_ID),
        "CallbackCommand": "OfficialAccount.CallbackAfterMsgWithDraw",
        "contenttype": "json",
        "ClientIP": "127.0.0.1",
        "OptPlatform": "RESTAPI",
        "Sign": sign(TOKEN, t),
        "RequestTime": t,
        **overrides,
    }
    return "/tencent-im/callback?" + "&".join(f"{k}={v}" for k, v in params.items())


def test_readme_recall_marks_the_message_recalled(example: tuple[str, int]) -> None:
    body = json.dumps(recall_body(["72_1_1698741760"], official_account="@TOA#_news")).encode()
    status, envelope, _ = request(example, "POST", query(), body)
    assert (status, envelope) == (200, {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""})
    status, messages, _ = request(example, "GET", "/messages")
    recalled = {m["msg_key"]: m["recalled_at"] for m in messages}
    assert recalled["72_1_1698741760"] is not None
    assert recalled["71_1_1698741698"] is None


def test_sent_message_is_mirrored_then_recalled(example: tuple[str, int]) -> None:
    sent = {
        "CallbackCommand": "OfficialAccount.CallbackAfterSendMsg",
        "Official_Account": "@TOA#_news",
        "MsgKey": "80_1_1698742000",
        "MsgTime": 1698742000,
        "OnlineOnlyFlag": 0,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "Breaking."}}],
        "EventTime": 1698742000123,
    }
    status, envelope, _ = request(
        example,
        "POST",
        query(CallbackCommand="OfficialAccount.CallbackAfterSendMsg"),
        json.dumps(sent).encode(),
    )
    assert (status, envelope["ActionStatus"]) == (200, "OK")
    body = json.dumps(recall_body(["80_1_1698742000"], official_account="@TOA#_news")).encode()
    assert request(example, "POST", query(), body)[0] == 200
    _, messages, _ = request(example, "GET", "/messages")
    (mirrored,) = [m for m in messages if m["msg_key"] == "80_1_1698742000"]
    assert mirrored["text"] == "Breaking."
    assert mirrored["recalled_at"] is not None


def test_a_redelivered_send_is_mirrored_once_with_its_time(example: tuple[str, int]) -> None:
    sent = after_send_msg_body(
        "81_1_1698742100", official_account="@TOA#_news", text="Once.", msg_time=1698742100
    )
    for _ in range(2):
        status, envelope, _ = request(
            example,
            "POST",
            query(CallbackCommand="OfficialAccount.CallbackAfterSendMsg"),
            json.dumps(sent).encode(),
        )
        assert (status, envelope) == (200, OK)
    _, messages, _ = request(example, "GET", "/messages")
    (mirrored,) = [m for m in messages if m["msg_key"] == "81_1_1698742100"]
    assert mirrored["text"] == "Once."
    assert mirrored["sent_at"] == "2023-10-31T08:48:20+00:00"
    assert mirrored["recalled_at"] is None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (
            "Breaking: the forbidden results.",
            {
                "ActionStatus": "OK",
                "ErrorCode": 120001,
                "ErrorInfo": "Blocked by moderation: 'forbidden'.",
            },
        ),
        (
            "FORBIDDEN in capitals.",
            {
                "ActionStatus": "OK",
                "ErrorCode": 120001,
                "ErrorInfo": "Blocked by moderation: 'forbidden'.",
            },
        ),
        ("Tomorrow's weather: sunny.", OK),
    ],
    ids=["denied", "denied-any-case", "allowed"],
)
def test_the_moderation_decider_answers_a_before_send(
    example: tuple[str, int], text: str, answer: dict[str, Any]
) -> None:
    body = {
        "CallbackCommand": "OfficialAccount.CallbackBeforeSendMsg",
        "Official_Account": "@TOA#_news",
        "OnlineOnlyFlag": 0,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}],
        "CloudCustomData": "",
        "EventTime": int(time.time() * 1000),
    }
    started = time.monotonic()
    status, envelope, _ = request(
        example,
        "POST",
        query(CallbackCommand="OfficialAccount.CallbackBeforeSendMsg"),
        json.dumps(body).encode(),
    )
    assert time.monotonic() - started < 2.0  # inside Tencent's budget (a bound, not a speed)
    assert (status, envelope) == (200, answer)


GOOD = json.dumps(recall_body(["73_1_1698741822"], official_account="@TOA#_news")).encode()

# Query overrides, or a literal path; signed when the test runs, not at collection (a run that
# reaches this module more than OA_RECALL_MAX_SKEW_SECONDS later would send a stale request).
ERRORS: list[tuple[str, dict[str, str] | str, bytes | None, str]] = [
    ("GET", {}, None, "method_not_allowed"),
    ("POST", {}, b"{" * 70000, "body_too_large"),
    ("POST", {"SdkAppid": "1400000001"}, GOOD, "unknown_sdkappid"),
    ("POST", {"Sign": "0" * 64}, GOOD, "bad_signature"),
    ("POST", {}, b"not json", "malformed_body"),
    ("POST", {}, json.dumps({"CallbackCommand": "x"}).encode(), "command_mismatch"),
    ("POST", "/tencent-im/callback/nope", GOOD, "not_found"),
]


@pytest.mark.parametrize(("method", "path", "body", "reason"), ERRORS, ids=[e[3] for e in ERRORS])
def test_error_statuses_carry_the_envelope_over_real_http(
    example: tuple[str, int],
    method: str,
    path: dict[str, str] | str,
    body: bytes | None,
    reason: str,
) -> None:
    target = path if isinstance(path, str) else query(**path)
    status, envelope, headers = request(example, method, target, body)
    rejection = REJECTIONS[reason]
    assert status == rejection.status
    assert envelope == {
        "ActionStatus": "FAIL",
        "ErrorCode": rejection.error_code,
        "ErrorInfo": rejection.info,
    }
    assert headers["Content-Type"] == "application/json"
    assert TOKEN not in json.dumps(envelope)
