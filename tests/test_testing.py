"""``flask_oa_recall.testing``: builders, signed queries, posting, capturing; via the real route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from flask import Flask

import flask_oa_recall.testing as testing
from flask_oa_recall import (
    RECALL_COMMAND,
    OARecall,
    RecallEvent,
    create_blueprint,
    messages_recalled,
)
from flask_oa_recall.testing import (
    ADD_SUBSCRIBER_COMMAND,
    DEFAULT_MSG_KEY,
    DEFAULT_OFFICIAL_ACCOUNT,
    SEND_MSG_COMMAND,
    ReceiverFailure,
    Rejected,
    after_add_subscriber_body,
    after_send_msg_body,
    callback_body,
    callback_path,
    capture,
    capture_callbacks,
    capture_recalls,
    post_callback,
    recall_body,
    sign,
    signed_query,
)

from .conftest import SDK_APP_ID, TOKEN, AppFactory

OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


def query_of(qs: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(qs, keep_blank_values=True).items()}


def test_all_names_are_exported_and_documented() -> None:
    for name in testing.__all__:
        obj = getattr(testing, name)
        if callable(obj):
            assert obj.__doc__, name
    public = {
        name
        for name, obj in vars(testing).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == testing.__name__
    }
    assert public <= set(testing.__all__)


def test_sign_matches_tencents_published_vector() -> None:
    assert sign("xxxxyyyy", "1669872112") == (
        "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
    )


def test_recall_body_lists_msg_keys_in_order_with_a_millisecond_event_time() -> None:
    body = recall_body(["1_1_1", "2_1_2"], official_account="@TOA#_news")
    assert body["CallbackCommand"] == RECALL_COMMAND
    assert body["Official_Account"] == "@TOA#_news"
    assert body["WithdrawMsgList"] == [{"MsgKey": "1_1_1"}, {"MsgKey": "2_1_2"}]
    assert isinstance(body["EventTime"], int)
    assert body["EventTime"] > 10**12  # milliseconds, not seconds


def test_recall_body_keeps_a_string_event_time_and_extra_fields() -> None:
    body = recall_body(event_time_ms="1670574414123", Operator_Account="admin")
    assert body["EventTime"] == "1670574414123"
    assert body["Operator_Account"] == "admin"
    assert body["WithdrawMsgList"] == [{"MsgKey": DEFAULT_MSG_KEY}]
    assert body["Official_Account"] == DEFAULT_OFFICIAL_ACCOUNT


def test_callback_body_fields_may_override_event_time() -> None:
    body = callback_body("State.StateChange", EventTime=5, Info={"To_Account": "u"})
    assert body == {
        "CallbackCommand": "State.StateChange",
        "EventTime": 5,
        "Info": {"To_Account": "u"},
    }


def test_after_send_msg_body_is_accepted_and_reaches_callback_received(app: Flask) -> None:
    body = after_send_msg_body("9_1_1700000000", text="hi", msg_time=1700000000)
    assert body["MsgBody"] == [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]
    with capture(app) as seen:
        response = post_callback(app.test_client(), app, body)
    assert (response.status_code, response.json) == (200, OK)
    assert [c.command for c in seen.callbacks] == [SEND_MSG_COMMAND]
    assert seen.callbacks[0].body["MsgKey"] == "9_1_1700000000"
    assert seen.callbacks[0].body["MsgTime"] == 1700000000
    assert seen.recalls == []


def test_after_add_subscriber_body_is_accepted(app: Flask) -> None:
    body = after_add_subscriber_body(["u1", "u2"], operator="op")
    with capture_callbacks(app) as callbacks:
        response = post_callback(app.test_client(), app, body)
    assert (response.status_code, response.json) == (200, OK)
    assert callbacks[0].command == ADD_SUBSCRIBER_COMMAND
    assert callbacks[0].body["SubscribeAccountList"] == [
        {"Subscriber_Account": "u1"},
        {"Subscriber_Account": "u2"},
    ]
    assert callbacks[0].body["Operator_Account"] == "op"


def test_signed_query_reads_sdkappid_and_first_token_from_config(app: Flask) -> None:
    query = query_of(signed_query(app, request_time=1669872112))
    assert query["SdkAppid"] == str(SDK_APP_ID)
    assert query["CallbackCommand"] == RECALL_COMMAND
    assert query["RequestTime"] == "1669872112"
    assert query["Sign"] == sign(TOKEN, "1669872112")
    assert (query["contenttype"], query["ClientIP"], query["OptPlatform"]) == (
        "json",
        "127.0.0.1",
        "RESTAPI",
    )


@pytest.mark.parametrize(
    ("sdkappid", "tokens", "expected_id", "expected_token"),
    [
        ([1400000001, 1400000002], ["t1", "t2"], 1400000001, "t1"),
        ([1400000001, 1400000002], {1400000001: ["a1"], 1400000002: ["b1"]}, 1400000001, "a1"),
        (1400000003, {"1400000003": ["s1", "s2"]}, 1400000003, "s1"),
    ],
    ids=["list-of-ids", "dict-of-tokens", "dict-with-string-keys"],
)
def test_signed_query_picks_the_first_id_and_its_first_token(
    make_app: AppFactory, sdkappid: Any, tokens: Any, expected_id: int, expected_token: str
) -> None:
    app = make_app(sdkappid=sdkappid, tokens=tokens)
    query = query_of(signed_query(app, request_time=100))
    assert query["SdkAppid"] == str(expected_id)
    assert query["Sign"] == sign(expected_token, 100)
    response = post_callback(app.test_client(), app)
    assert (response.status_code, response.json) == (200, OK)


def test_signed_query_without_a_token_sends_no_signature(make_app: AppFactory) -> None:
    app = make_app(tokens=[])
    query = query_of(signed_query(app))
    assert "Sign" not in query
    assert "RequestTime" not in query
    assert "Sign" not in query_of(signed_query(make_app(), token=""))


def test_signed_query_overrides_leave_out_and_extra_parameters() -> None:
    query = query_of(
        signed_query(
            sdk_app_id=7, token="t", request_time=5, client_ip=None, platform=None, Extra="x"
        )
    )
    assert query == {
        "SdkAppid": "7",
        "CallbackCommand": RECALL_COMMAND,
        "contenttype": "json",
        "Sign": sign("t", 5),
        "RequestTime": "5",
        "Extra": "x",
    }


def test_signed_query_without_any_sdkappid_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs an SdkAppid"):
        signed_query(token="t")


def test_callback_path_follows_oa_recall_path(make_app: AppFactory) -> None:
    assert callback_path(make_app()) == "/tencent-im/callback"
    app = make_app(path="/hooks/im")
    assert callback_path(app) == "/hooks/im"
    with capture_recalls(app) as events:
        response = post_callback(app.test_client())
    assert (response.status_code, response.json) == (200, OK)
    assert [e.msg_keys for e in events] == [(DEFAULT_MSG_KEY,)]


def test_callback_path_follows_a_blueprint_mounted_by_the_host(tmp_path: Path) -> None:
    app = Flask("mounted", instance_path=str(tmp_path))
    app.config.update(
        OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_TOKENS=[TOKEN], OA_RECALL_STORE="memory://"
    )
    app.register_blueprint(create_blueprint(), url_prefix="/api/tencent")
    assert callback_path(app) == "/api/tencent"
    with capture_recalls(app) as events:
        response = post_callback(app.test_client(), app, msg_keys=["5_1_5"])
    assert (response.status_code, response.json) == (200, OK)
    assert [e.msg_keys for e in events] == [("5_1_5",)]


def test_callback_path_falls_back_to_the_config_without_a_route() -> None:
    app = Flask("bare")
    assert callback_path(app) == "/tencent-im/callback"
    app.config["OA_RECALL_PATH"] = "/elsewhere"
    assert callback_path(app) == "/elsewhere"


def test_post_callback_sends_raw_bytes_and_takes_the_command_from_the_body(app: Flask) -> None:
    raw = json.dumps(callback_body("Group.CallbackAfterRecallMsg", GroupId="g")).encode()
    with capture(app) as seen:
        recall_like = post_callback(app.test_client(), app, raw)
        as_dict = post_callback(app.test_client(), app, callback_body("Sns.CallbackFriendAdd"))
    # Raw bytes carry no command the helper can read, so the query says it is a recall.
    assert recall_like.status_code == 400
    assert recall_like.json["ErrorCode"] == 40003
    assert (as_dict.status_code, as_dict.json) == (200, OK)
    assert [c.command for c in seen.callbacks] == ["Sns.CallbackFriendAdd"]
    assert [r.reason for r in seen.rejections] == ["command_mismatch"]


def test_post_callback_with_an_explicit_command_and_official_account(app: Flask) -> None:
    raw = json.dumps(callback_body("Group.CallbackAfterRecallMsg", GroupId="g")).encode()
    with capture(app) as seen:
        other = post_callback(app.test_client(), app, raw, command="Group.CallbackAfterRecallMsg")
        recall = post_callback(app.test_client(), official_account="@TOA#_x", msg_keys=["1_1_9"])
    assert (other.status_code, other.json) == (200, OK)
    assert (recall.status_code, recall.json) == (200, OK)
    assert [e.official_account for e in seen.recalls] == ["@TOA#_x"]


def test_post_callback_with_a_wrong_token_is_refused_and_captured(app: Flask) -> None:
    with capture(app) as seen:
        response = post_callback(app.test_client(), app, token="not-the-token")
    assert response.status_code == 401
    assert response.json == {
        "ActionStatus": "FAIL",
        "ErrorCode": 40102,
        "ErrorInfo": "Sign does not match any configured token.",
    }
    assert seen.rejections == [Rejected("bad_signature", 40102, 401)]
    assert seen.recalls == []
    assert seen.callbacks == []


def test_post_callback_with_a_stale_request_time_is_refused(app: Flask) -> None:
    with capture(app) as seen:
        response = post_callback(app.test_client(), request_time=1_000_000_000)
    assert response.status_code == 401
    assert response.json["ErrorCode"] == 40103
    assert seen.rejections == [Rejected("stale_request", 40103, 401)]


def test_capture_collects_recalls_and_callbacks_in_order(app: Flask) -> None:
    client = app.test_client()
    with capture(app) as seen:
        post_callback(client, app, msg_keys=["1_1_1", "2_1_2"])
        post_callback(client, app, msg_keys=["3_1_3"])
    assert seen.msg_keys == ["1_1_1", "2_1_2", "3_1_3"]
    assert [e.msg_keys for e in seen.recalls] == [("1_1_1", "2_1_2"), ("3_1_3",)]
    assert [c.command for c in seen.callbacks] == [RECALL_COMMAND, RECALL_COMMAND]
    assert seen.recalls[0].delivery_id == seen.callbacks[0].delivery_id
    assert seen.failures == []
    assert seen.store_failures == []


def test_capture_stops_at_the_end_of_the_block(app: Flask) -> None:
    before = list(messages_recalled.receivers_for(app))
    with capture(app) as seen:
        assert len(list(messages_recalled.receivers_for(app))) == len(before) + 1
    post_callback(app.test_client(), app)
    assert seen.recalls == []
    assert list(messages_recalled.receivers_for(app)) == before


def test_capture_hears_only_its_own_app(make_app: AppFactory) -> None:
    first, second = make_app(), make_app()
    with capture(first) as seen_first, capture_recalls(second) as second_events:
        post_callback(second.test_client(), second, msg_keys=["2_1_2"])
    assert seen_first.recalls == []
    assert [e.msg_keys for e in second_events] == [("2_1_2",)]


def test_a_redelivery_is_not_captured_twice(app: Flask) -> None:
    client = app.test_client()
    with capture_recalls(app) as events:
        post_callback(client, app, msg_keys=["1_1_1"])
        again = post_callback(client, app, msg_keys=["1_1_1"])
    assert (again.status_code, again.json) == (200, OK)
    assert [e.msg_keys for e in events] == [("1_1_1",)]


def test_capture_records_a_failing_receiver_and_a_later_block_sees_the_replay(
    app: Flask,
) -> None:
    attempts: list[str] = []

    def hide(sender: Flask, event: RecallEvent, **_: Any) -> None:
        attempts.append(event.msg_keys[0])
        if len(attempts) == 1:
            raise RuntimeError("database is down")

    messages_recalled.connect(hide, app)
    try:
        with capture(app) as first:
            response = post_callback(app.test_client(), app, msg_keys=["8_1_8"])
        assert (response.status_code, response.json) == (200, OK)
        assert [f.signal_name for f in first.failures] == ["messages_recalled"]
        failure = first.failures[0]
        assert isinstance(failure, ReceiverFailure)
        assert failure.receiver.endswith(".<locals>.hide")
        assert str(failure.exception) == "database is down"
        assert first.msg_keys == ["8_1_8"]

        with capture(app) as second:
            result = app.test_cli_runner().invoke(args=["oa-recall", "replay", "--failed"])
        assert result.exit_code == 0, result.output
        assert attempts == ["8_1_8", "8_1_8"]
        assert second.msg_keys == ["8_1_8"]
        assert second.failures == []
    finally:
        messages_recalled.disconnect(hide, app)


def test_capture_records_store_failures_and_the_recall_still_reaches_receivers(
    make_app: AppFactory, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("")
    app = make_app(store=f"sqlite:///{not_a_folder}/deliveries.sqlite3")
    with capture(app) as seen:
        response = post_callback(app.test_client(), app, msg_keys=["4_1_4"])
    assert (response.status_code, response.json) == (200, OK)
    assert seen.msg_keys == ["4_1_4"]
    assert len(seen.store_failures) >= 1
    assert "cannot open SQLite store" in str(seen.store_failures[0])


@pytest.mark.parametrize(
    ("app_ids", "tokens"),
    [
        ({1400000000}, ["tok"]),
        ("1400000000", {1400000000: ["tok"]}),
        ([1400000000, 7], {"1400000000": ["tok"]}),
    ],
    ids=["set", "string-id-int-keys", "list-string-keys"],
)
def test_signed_query_reads_every_config_form_the_extension_accepts(
    tmp_path: Path, app_ids: object, tokens: object
) -> None:
    app = Flask("forms", instance_path=str(tmp_path))
    app.config.update(
        OA_RECALL_SDKAPPID=app_ids, OA_RECALL_TOKENS=tokens, OA_RECALL_STORE="memory://"
    )
    OARecall(app)
    response = app.test_client().post(
        f"/tencent-im/callback?{signed_query(app)}", data=json.dumps(recall_body())
    )
    assert response.status_code == 200
