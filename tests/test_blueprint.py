"""The callback route through the test client: verification, parsing, signals, envelopes."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_oa_recall import (
    REJECTIONS,
    Callback,
    RecallEvent,
    callback_received,
    callback_rejected,
    messages_recalled,
    receiver_failed,
)
from flask_oa_recall.testing import (
    callback_body,
    capture_callbacks,
    capture_recalls,
    recall_body,
    sign,
    signed_query,
)

from .conftest import SDK_APP_ID, TOKEN, AppFactory

PATH = "/tencent-im/callback"
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


def envelope(response: Any) -> dict[str, Any]:
    data = json.loads(response.data)
    assert set(data) == {"ActionStatus", "ErrorCode", "ErrorInfo"}
    assert response.mimetype == "application/json"
    return data  # type: ignore[no-any-return]


@pytest.fixture
def rejections(app: Flask) -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def record(sender: Flask, **kwargs: Any) -> None:
        assert sender is app
        seen.append(kwargs)

    with callback_rejected.connected_to(record, app):
        yield seen


def now() -> str:
    return str(int(time.time()))


def url(**params: str) -> str:
    return PATH + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def signed(**overrides: str) -> dict[str, str]:
    t = now()
    params = {
        "SdkAppid": str(SDK_APP_ID),
        "CallbackCommand": "OfficialAccount.CallbackAfterMsgWithDraw",
        "contenttype": "json",
        "ClientIP": "127.0.0.1",
        "OptPlatform": "RESTAPI",
        "Sign": sign(TOKEN, t),
        "RequestTime": t,
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v != "<drop>"}


GOOD = json.dumps(recall_body(["71_1_1698741698"])).encode()


#: Signed when the test runs, not when pytest collects it: collecting the whole suite can take
#: longer than the allowed clock skew.
BAD_REQUESTS: list[tuple[str, Callable[[], dict[str, str]], bytes, str]] = [
    ("get", partial(signed), GOOD, "method_not_allowed"),
    ("put", partial(signed), GOOD, "method_not_allowed"),
    ("delete", partial(signed), GOOD, "method_not_allowed"),
    ("options", partial(signed), GOOD, "method_not_allowed"),
    ("post", partial(signed), b"x" * 70000, "body_too_large"),
    ("post", partial(signed, SdkAppid="<drop>"), GOOD, "missing_sdkappid"),
    ("post", partial(signed, SdkAppid="1400000001"), GOOD, "unknown_sdkappid"),
    ("post", partial(signed, Sign="<drop>", RequestTime="<drop>"), GOOD, "missing_signature"),
    ("post", partial(signed, Sign="0" * 64), GOOD, "bad_signature"),
    (
        "post",
        partial(signed, RequestTime="1669872112", Sign=sign(TOKEN, 1669872112)),
        GOOD,
        "stale_request",
    ),
    ("post", partial(signed, RequestTime="soon"), GOOD, "malformed_request_time"),
    ("post", partial(signed), b"not json", "malformed_body"),
    ("post", partial(signed), b"[1, 2]", "malformed_body"),
    ("post", partial(signed), b"\xff\xfe{}", "malformed_body"),
    ("post", partial(signed), b'{"a": NaN}', "malformed_body"),
    ("post", partial(signed), b"", "malformed_body"),
    (
        "post",
        partial(signed),
        json.dumps(recall_body(["k"]) | {"WithdrawMsgList": []}).encode(),
        "invalid_payload",
    ),
    (
        "post",
        partial(signed),
        json.dumps(recall_body(["k"]) | {"EventTime": "yesterday"}).encode(),
        "invalid_payload",
    ),
    (
        "post",
        partial(signed),
        json.dumps(
            {k: v for k, v in recall_body(["k"]).items() if k != "CallbackCommand"}
        ).encode(),
        "invalid_payload",
    ),
    (
        "post",
        partial(signed, CallbackCommand="OfficialAccount.CallbackAfterSendMsg"),
        GOOD,
        "command_mismatch",
    ),
    ("post", partial(signed, CallbackCommand="<drop>"), b"{}", "missing_command"),
    ("post", lambda: {**signed(), "sdkappid": "1"}, GOOD, "ambiguous_query"),
]


@pytest.mark.parametrize(
    ("method", "params", "data", "reason"),
    BAD_REQUESTS,
    ids=[f"{r[3]}-{i}" for i, r in enumerate(BAD_REQUESTS)],
)
def test_bad_request_gets_documented_envelope_and_no_dispatch(
    app: Flask,
    client: FlaskClient,
    rejections: list[dict[str, Any]],
    method: str,
    params: Callable[[], dict[str, str]],
    data: bytes,
    reason: str,
) -> None:
    rejection = REJECTIONS[reason]
    query = "&".join(f"{k}={v}" for k, v in params().items())
    with capture_recalls(app) as events, capture_callbacks(app) as callbacks:
        response = getattr(client, method)(f"{PATH}?{query}", data=data)
    assert response.status_code == rejection.status
    body = envelope(response)
    assert body["ActionStatus"] == "FAIL"
    assert body["ErrorCode"] == rejection.error_code
    assert body["ErrorInfo"]
    assert TOKEN not in response.get_data(as_text=True)
    assert events == []
    assert callbacks == []
    assert rejections == [
        {"reason": reason, "error_code": rejection.error_code, "status": rejection.status}
    ]


def test_method_not_allowed_names_post_in_allow_header(client: FlaskClient) -> None:
    response = client.get(url(**signed()))
    assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize("path", [PATH + "/", PATH + "/extra", PATH + "/a/b"], ids=str)
def test_paths_below_the_route_get_the_404_envelope(client: FlaskClient, path: str) -> None:
    response = client.post(path, data=GOOD)
    assert response.status_code == 404
    assert envelope(response)["ErrorCode"] == REJECTIONS["not_found"].error_code


def test_body_over_limit_without_content_length_is_413(make_app: AppFactory) -> None:
    app = make_app(max_body_bytes=100)

    response = app.test_client().post(
        url(**signed()),
        input_stream=io.BytesIO(b"x" * 500),
        headers={"Transfer-Encoding": "chunked"},
        # What gunicorn sets for a chunked body; werkzeug then ignores any Content-Length.
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert envelope(response)["ErrorCode"] == 41301


def test_body_exactly_at_limit_is_read(make_app: AppFactory) -> None:
    app = make_app(max_body_bytes=len(GOOD))
    with capture_recalls(app) as events:
        response = app.test_client().post(url(**signed()), data=GOOD)
    assert envelope(response) == OK
    assert len(events) == 1


def test_seed_sample_builds_the_documented_event(app: Flask, client: FlaskClient) -> None:
    seed = (
        b'{"CallbackCommand":"OfficialAccount.CallbackAfterMsgWithDraw",'
        b'"Official_Account":"#TOA#_123","WithdrawMsgList":[{"MsgKey":"71_1_1698741698"}],'
        b'"EventTime":1670574414123}'
    )
    with capture_recalls(app) as events:
        response = client.post(url(**signed()), data=seed)
    assert response.status_code == 200
    assert envelope(response) == OK
    (event,) = events
    assert isinstance(event, RecallEvent)
    assert event.official_account == "#TOA#_123"
    assert event.msg_keys == ("71_1_1698741698",)
    assert event.event_time_ms == 1670574414123
    assert event.event_time.isoformat() == "2022-12-09T08:26:54.123000+00:00"
    assert event.sdk_app_id == SDK_APP_ID
    assert event.platform == "RESTAPI"
    assert event.client_ip == "127.0.0.1"
    assert event.raw == json.loads(seed)
    with pytest.raises(AttributeError):
        event.official_account = "x"  # type: ignore[misc]


def test_several_msg_keys_arrive_in_payload_order(app: Flask, client: FlaskClient) -> None:
    keys = ["3_1_3", "1_1_1", "2_1_2", "1_1_1"]
    with capture_recalls(app) as events:
        client.post(url(**signed()), data=json.dumps(recall_body(keys)))
    assert events[0].msg_keys == ("3_1_3", "1_1_1", "2_1_2")


@pytest.mark.parametrize(
    ("query", "changes"),
    [
        ({"ClientIP": "<drop>", "OptPlatform": "<drop>"}, {}),
        ({"OptPlatform": "HarmonyOS"}, {}),
        ({"OptPlatform": "macOS"}, {}),
        ({"OptPlatform": "IOS"}, {}),
        ({"contenttype": "JSON"}, {}),
        ({"contenttype": "<drop>"}, {}),
        ({}, {"EventTime": "1670574414123"}),
        ({}, {"Official_Account": "#TOA#_123"}),
        ({}, {"Official_Account": "@TOA#_123"}),
        ({}, {"Operator_Account": "admin", "Reason": "spam"}),
    ],
    ids=[
        "no-clientip-no-platform",
        "unknown-platform",
        "macOS",
        "IOS",
        "contenttype-upper",
        "no-contenttype",
        "eventtime-string",
        "hash-prefix",
        "at-prefix",
        "unknown-fields",
    ],
)
def test_sender_quirks_are_tolerated(
    app: Flask, client: FlaskClient, query: dict[str, str], changes: dict[str, Any]
) -> None:
    data = recall_body(["71_1_1698741698"]) | changes
    with capture_recalls(app) as events:
        response = client.post(url(**signed(**query)), data=json.dumps(data))
    assert envelope(response) == OK
    assert events[0].raw == data
    assert events[0].event_time_ms == 1670574414123 or "EventTime" not in changes


def test_query_names_in_any_case_and_order(app: Flask, client: FlaskClient) -> None:
    t = now()
    query = (
        f"requesttime={t}&SIGN={sign(TOKEN, t)}&optplatform=Web&sdkappid={SDK_APP_ID}"
        "&callbackcommand=OfficialAccount.CallbackAfterMsgWithDraw"
    )
    with capture_recalls(app) as events:
        response = client.post(f"{PATH}?{query}", data=GOOD)
    assert envelope(response) == OK
    assert events[0].platform == "Web"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", None],
    ids=str,
)
def test_body_is_json_whatever_the_content_type(
    app: Flask, client: FlaskClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with capture_recalls(app) as events:
        response = client.post(url(**signed()), data=GOOD, headers=headers)
    assert envelope(response) == OK
    assert len(events) == 1


@pytest.mark.parametrize(
    "command",
    [
        "OfficialAccount.CallbackBeforeSendMsg",
        "OfficialAccount.CallbackAfterSendMsg",
        "OfficialAccount.CallbackAfterCreateOfficialAccount",
        "C2C.CallbackAfterMsgWithDraw",
        "Some.FutureCommand",
    ],
    ids=str,
)
def test_other_commands_are_acknowledged_and_offered_generically(
    app: Flask, client: FlaskClient, command: str
) -> None:
    data = callback_body(command, Official_Account="@TOA#_1", Anything={"x": 1})
    with capture_recalls(app) as events, capture_callbacks(app) as callbacks:
        response = client.post(url(**signed(CallbackCommand=command)), data=json.dumps(data))
        # A before-callback is signalled once its answer went out (the server closes it).
        response.close()
    assert envelope(response) == OK
    assert events == []
    (callback,) = callbacks
    assert isinstance(callback, Callback)
    assert callback.command == command
    assert callback.body == data
    assert callback.sdk_app_id == SDK_APP_ID
    assert "Sign" not in callback.query
    assert callback.delivery_id


def test_callback_received_fires_before_messages_recalled(app: Flask, client: FlaskClient) -> None:
    order: list[str] = []

    def on_callback(sender: Flask, **kw: Any) -> None:
        order.append("callback")

    def on_recall(sender: Flask, **kw: Any) -> None:
        order.append("recall")

    with (
        callback_received.connected_to(on_callback, app),
        messages_recalled.connected_to(on_recall, app),
    ):
        client.post(url(**signed()), data=GOOD)
    assert order == ["callback", "recall"]


def test_failing_receiver_is_isolated_and_reported(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    failures: list[dict[str, Any]] = []

    def before(sender: Flask, event: RecallEvent, **kw: Any) -> None:
        calls.append("before")

    def broken(sender: Flask, event: RecallEvent, **kw: Any) -> None:
        raise RuntimeError("index is down")

    def after(sender: Flask, event: RecallEvent, **kw: Any) -> None:
        calls.append("after")

    def on_failure(sender: Flask, **kw: Any) -> None:
        failures.append(kw)

    with (
        messages_recalled.connected_to(before, app),
        messages_recalled.connected_to(broken, app),
        messages_recalled.connected_to(after, app),
        receiver_failed.connected_to(on_failure, app),
    ):
        response = client.post(url(**signed()), data=GOOD)
    assert envelope(response) == OK
    assert calls == ["before", "after"]
    (failure,) = failures
    assert failure["receiver"].endswith(
        "test_failing_receiver_is_isolated_and_reported.<locals>.broken"
    )
    assert failure["signal_name"] == "messages_recalled"
    assert isinstance(failure["exception"], RuntimeError)
    assert failure["delivery_id"]
    record = next(r for r in caplog.records if r.levelname == "ERROR")
    assert record.exc_info is not None


def test_failing_receiver_failed_receiver_is_ignored(app: Flask, client: FlaskClient) -> None:
    def broken(sender: Flask, **kw: Any) -> None:
        raise RuntimeError("first")

    def broken_too(sender: Flask, **kw: Any) -> None:
        raise RuntimeError("second")

    with (
        messages_recalled.connected_to(broken, app),
        receiver_failed.connected_to(broken_too, app),
        callback_rejected.connected_to(broken_too, app),
    ):
        assert envelope(client.post(url(**signed()), data=GOOD)) == OK
        assert client.post(url(**signed(Sign="bad"))).status_code == 401


def test_async_receivers_are_awaited(app: Flask, client: FlaskClient) -> None:
    seen: list[tuple[str, ...]] = []

    async def on_recall(sender: Flask, event: RecallEvent, **kw: Any) -> None:
        seen.append(event.msg_keys)

    with messages_recalled.connected_to(on_recall, app):
        response = client.post(url(**signed()), data=GOOD)
    assert envelope(response) == OK
    assert seen == [("71_1_1698741698",)]


def test_two_apps_in_one_process_only_hear_their_own(make_app: AppFactory) -> None:
    first = make_app()
    second = make_app(sdkappid=1400000002, tokens=["other-token"])
    with capture_recalls(first) as first_events, capture_recalls(second) as second_events:
        first.test_client().post(url(**signed()), data=GOOD)
        t = now()
        second.test_client().post(
            url(**signed(SdkAppid="1400000002", Sign=sign("other-token", t), RequestTime=t)),
            data=json.dumps(recall_body(["9_1_9"])),
        )
        rejected = second.test_client().post(url(**signed()), data=GOOD)
    assert [e.msg_keys for e in first_events] == [("71_1_1698741698",)]
    assert [e.msg_keys for e in second_events] == [("9_1_9",)]
    assert rejected.status_code == 403


def test_per_app_id_tokens_reject_a_token_of_another_app(make_app: AppFactory) -> None:
    app = make_app(sdkappid=[1, 2], tokens={1: ["one"], "2": ["two"]})
    client = app.test_client()
    t = now()
    ok = client.post(url(**signed(SdkAppid="1", Sign=sign("one", t), RequestTime=t)), data=GOOD)
    wrong = client.post(url(**signed(SdkAppid="1", Sign=sign("two", t), RequestTime=t)), data=GOOD)
    assert envelope(ok) == OK
    assert wrong.status_code == 401
    assert envelope(wrong)["ErrorCode"] == 40102


def test_no_tokens_means_unsigned_requests_pass_and_a_warning_once(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tokens=[])
    client = app.test_client()
    for _ in range(2):
        response = client.post(url(**signed(Sign="<drop>", RequestTime="<drop>")), data=GOOD)
        assert envelope(response) == OK
    warnings = [r for r in caplog.records if "authentication is off" in r.getMessage()]
    assert len(warnings) == 1


def test_redelivered_recall_is_acknowledged_but_not_dispatched_again(
    app: Flask, client: FlaskClient
) -> None:
    with capture_recalls(app) as events:
        first = client.post(url(**signed()), data=GOOD)
        again = client.post(url(**signed()), data=GOOD)
        mixed = client.post(
            url(**signed()), data=json.dumps(recall_body(["71_1_1698741698", "new_1_1"]))
        )
    assert envelope(first) == envelope(again) == envelope(mixed) == OK
    assert [e.msg_keys for e in events] == [("71_1_1698741698",), ("new_1_1",)]


def test_config_changed_after_init_is_read_at_request_time(app: Flask, client: FlaskClient) -> None:
    app.config["OA_RECALL_SDKAPPID"] = 42
    response = client.post(url(**signed()), data=GOOD)
    assert response.status_code == 403


def test_signed_query_helper_round_trips(app: Flask, client: FlaskClient) -> None:
    with capture_recalls(app) as events:
        response = client.post(f"{PATH}?{signed_query(app)}", data=GOOD)
    assert envelope(response) == OK
    assert len(events) == 1


def test_host_max_content_length_still_gets_the_json_413(make_app: AppFactory) -> None:
    app = make_app()
    app.config["MAX_CONTENT_LENGTH"] = 100
    response = app.test_client().post(url(**signed()), data=b"{" * 150)
    assert response.status_code == 413
    assert envelope(response)["ErrorCode"] == 41301
