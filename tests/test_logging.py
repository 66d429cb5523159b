"""Logs that explain themselves: one WARNING per rejection, ERROR with tracebacks for failures,
structured fields in ``extra``, and never a token, a Sign or a body."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import StoreError, messages_recalled
from flask_oa_recall.logging import LOGGER_NAME, JSONFormatter
from flask_oa_recall.testing import post_callback, recall_body, sign, signed_query

from .conftest import SDK_APP_ID, TOKEN, AppFactory

BODY_SECRET = "a-body-nobody-may-log"


def records_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(LOGGER_NAME)]


def everything_logged(record: logging.LogRecord) -> str:
    """The record as a log shipper would see it: message, extra fields and traceback."""
    return JSONFormatter().format(record)


def test_a_bad_sign_is_logged_once_without_the_token_or_the_sign(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    bad_sign = sign("not-the-token", str(int(time.time())))
    good_sign = sign(TOKEN, str(int(time.time())))
    body = recall_body([BODY_SECRET])
    query = signed_query(app, client_ip="203.0.113.7", token="")
    url = f"/tencent-im/callback?{query}&Sign={bad_sign}&RequestTime={int(time.time())}"
    response = app.test_client().post(
        url, data=json.dumps(body), environ_base={"REMOTE_ADDR": "198.51.100.2"}
    )
    assert (response.status_code, response.json["ErrorCode"]) == (401, 40102)

    (record,) = records_of(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "rejected a callback from 198.51.100.2 (ClientIP 203.0.113.7): bad_signature (HTTP 401):"
        " Sign does not match any configured token."
    )
    fields = record.__dict__
    assert fields["reason"] == "bad_signature"
    assert fields["remote_addr"] == "198.51.100.2"
    assert fields["client_ip"] == "203.0.113.7"
    assert fields["sdk_app_id"] == str(SDK_APP_ID)
    assert fields["command"] == "OfficialAccount.CallbackAfterMsgWithDraw"
    assert (fields["status"], fields["error_code"]) == (401, 40102)
    for record in caplog.records:
        text = everything_logged(record)
        for secret in (TOKEN, bad_sign, good_sign, BODY_SECRET):
            assert secret not in text


REJECTED = [
    ("GET", {}, "method_not_allowed"),
    ("POST", {"sdk_app_id": 1}, "unknown_sdkappid"),
    ("POST", {"token": ""}, "missing_signature"),
    ("POST", {"request_time": 1}, "stale_request"),
    ("POST", {"command": "Other.Command"}, "command_mismatch"),
]


@pytest.mark.parametrize(("method", "query", "reason"), REJECTED, ids=[r[2] for r in REJECTED])
def test_every_rejection_is_one_warning_with_its_reason_and_address(
    make_app: AppFactory,
    caplog: pytest.LogCaptureFixture,
    method: str,
    query: dict[str, Any],
    reason: str,
) -> None:
    app = make_app()
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    url = f"/tencent-im/callback?{signed_query(app, **query)}"
    app.test_client().open(url, method=method, data=json.dumps(recall_body(["1_1_1"])))
    warnings = [r for r in records_of(caplog) if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.__dict__["reason"]) for r in warnings] == [("WARNING", reason)]
    assert warnings[0].__dict__["remote_addr"] == "127.0.0.1"
    assert "from 127.0.0.1 (ClientIP 127.0.0.1)" in warnings[0].getMessage()


def test_query_values_in_a_rejection_are_short_and_on_one_line(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    app.test_client().post(
        "/tencent-im/callback?SdkAppid=9&ClientIP=" + "%0A" + "x" * 200, data=b"{}"
    )
    (record,) = records_of(caplog)
    assert "\n" not in record.getMessage()
    assert record.__dict__["client_ip"] == "?" + "x" * 60 + "..."
    assert record.__dict__["sdk_app_id"] == "9"


def test_a_failing_receiver_is_an_error_with_its_traceback_and_fields(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    def broken(sender: Flask, **_: Any) -> None:
        raise RuntimeError("mirror down")

    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    with messages_recalled.connected_to(broken, app):
        assert post_callback(app.test_client()).status_code == 200
    (record,) = [r for r in records_of(caplog) if r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert record.__dict__["receiver"].endswith("broken")
    assert record.__dict__["signal"] == "messages_recalled"
    assert len(record.__dict__["delivery_id"]) == 24


def test_a_store_failure_is_an_error_with_its_traceback(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    store = app.extensions["oa_recall"].store(app.extensions["oa_recall"].settings(app.config))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("the store is gone")

    monkeypatch.setattr(store, "begin", refuse)
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    assert post_callback(app.test_client()).status_code == 200
    (record,) = [r for r in records_of(caplog) if r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert record.exc_info[0] is StoreError
    assert "could not be kept" in record.getMessage()
    assert len(record.__dict__["delivery_id"]) == 24


def make_record(**extra: Any) -> logging.LogRecord:
    record = logging.getLogger("flask_oa_recall.test").makeRecord(
        "flask_oa_recall.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None
    )
    record.__dict__.update(extra)
    record.created = 1700000000.5
    return record


def test_json_formatter_writes_one_line_with_time_level_message_and_extra() -> None:
    line = JSONFormatter().format(make_record(reason="bad_signature", status=401, obj=object()))
    assert "\n" not in line
    payload = json.loads(line)
    assert payload["time"] == "2023-11-14T22:13:20.500Z"
    assert payload["level"] == "WARNING"
    assert payload["logger"] == "flask_oa_recall.test"
    assert payload["message"] == "hello world"
    assert payload["reason"] == "bad_signature"
    assert payload["status"] == 401
    assert payload["obj"].startswith("<object object")
    assert "args" not in payload
    assert "msg" not in payload


def test_json_formatter_includes_the_traceback_and_stack() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record()
        record.exc_info = sys.exc_info()
    record.stack_info = "Stack (most recent call last):\n  here"
    payload = json.loads(JSONFormatter().format(record))
    assert payload["exc_info"].startswith("Traceback (most recent call last)")
    assert payload["exc_info"].endswith("ValueError: boom")
    assert payload["stack_info"].endswith("here")


def test_every_package_logger_is_under_one_tree() -> None:
    import flask_oa_recall.blueprint
    import flask_oa_recall.delivery
    import flask_oa_recall.dispatch
    import flask_oa_recall.state

    for module in (
        flask_oa_recall.blueprint,
        flask_oa_recall.delivery,
        flask_oa_recall.dispatch,
        flask_oa_recall.state,
    ):
        assert module.logger.name.split(".")[0] == LOGGER_NAME
