"""Deciders answer before-callbacks: every decision kind in the real answer body, validation,
checks that come first, the fallback, the bounded pool, async deciders, ``decision_failed``.

In-process, through Flask's test client; ``test_deciders_gunicorn.py`` does the budget under
real gunicorn sync workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, current_app, g, request
from werkzeug.test import TestResponse

from flask_oa_recall import (
    RECALL_COMMAND,
    Callback,
    DecidersBusy,
    Decision,
    DecisionTimeout,
    OARecall,
    OARecallError,
    callback_received,
    decision_failed,
)
from flask_oa_recall.config import DEFAULTS, parse_settings
from flask_oa_recall.deciders import DeciderPool, _Job, is_before_command
from flask_oa_recall.state import get_state
from flask_oa_recall.store import MemoryStore
from flask_oa_recall.testing import callback_body, signed_query

from .conftest import SDK_APP_ID, TOKEN

SEND = "OfficialAccount.CallbackBeforeSendMsg"
CREATE = "OfficialAccount.CallbackBeforeCreateOfficialAccount"
SUBSCRIBE = "OfficialAccount.CallbackBeforeAddSubscriber"
TEXT = [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hello"}}]
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


def make(oa: OARecall | None = None, **config: Any) -> Flask:
    app = Flask("decider_host")
    app.config.update(
        TESTING=True,
        OA_RECALL_SDKAPPID=SDK_APP_ID,
        OA_RECALL_TOKENS=[TOKEN],
        OA_RECALL_STORE="memory://",
    )
    app.config.update({f"OA_RECALL_{k.upper()}": v for k, v in config.items()})
    (oa or OARecall()).init_app(app)
    return app


def send_body(text: str = "hello") -> dict[str, Any]:
    """A realistic ``OfficialAccount.CallbackBeforeSendMsg`` body (PROTOCOL.md §4.1, 60803)."""
    return callback_body(
        SEND,
        Official_Account="@TOA#_news",
        OnlineOnlyFlag=0,
        MsgBody=[{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}],
        CloudCustomData="",
    )


def post(
    app: Flask, body: dict[str, Any] | None = None, *, close: bool = True, **query: Any
) -> TestResponse:
    """POST a signed before-callback; by default close the response, which runs what comes
    after the answer (``call_on_close``), as a WSGI server does once the answer is written."""
    body = body if body is not None else send_body()
    command = query.pop("command", body["CallbackCommand"])
    url = f"/tencent-im/callback?{signed_query(app, command=command, **query)}"
    response = app.test_client().post(url, data=json.dumps(body))
    if close:
        response.close()
    return response


def answer(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    data: dict[str, Any] = json.loads(response.data)
    return data


def wait_idle(pool: DeciderPool) -> None:
    """Wait (bounded) until no job of ``pool`` is running."""
    for _ in range(500):
        if pool.busy == 0:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{pool.busy} decider jobs still running after 5 s")


@pytest.fixture
def failures() -> Iterator[list[dict[str, Any]]]:
    """What ``decision_failed`` was sent with, sender included."""
    seen: list[dict[str, Any]] = []

    def record(sender: Flask, **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})

    with decision_failed.connected_to(record):
        yield seen


# -- every decision kind, against the real answer body ------------------------------------------


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (None, OK),
        (Decision.allow(), OK),
        (
            Decision.allow(msg_body=TEXT),
            {**OK, "MsgBody": TEXT},
        ),
        (
            Decision.allow(cloud_custom_data='{"checked":true}'),
            {**OK, "CloudCustomData": '{"checked":true}'},
        ),
        (
            Decision.allow(msg_body=TEXT, cloud_custom_data=""),
            {**OK, "MsgBody": TEXT, "CloudCustomData": ""},
        ),
        (
            Decision.allow(refused_subscribers=["user1", "user2"]),
            {**OK, "RefusedSubscribers_Account": ["user1", "user2"]},
        ),
        (Decision.deny(), {"ActionStatus": "OK", "ErrorCode": 1, "ErrorInfo": ""}),
        (
            Decision.deny("Blocked by moderation."),
            {"ActionStatus": "OK", "ErrorCode": 1, "ErrorInfo": "Blocked by moderation."},
        ),
        (
            Decision.deny("custom low", error_code=120001),
            {"ActionStatus": "OK", "ErrorCode": 120001, "ErrorInfo": "custom low"},
        ),
        (
            Decision.deny("自定义", error_code=130000),
            {"ActionStatus": "OK", "ErrorCode": 130000, "ErrorInfo": "自定义"},
        ),
        (Decision.drop(), {"ActionStatus": "OK", "ErrorCode": 2, "ErrorInfo": ""}),
    ],
    ids=[
        "none-allows",
        "allow",
        "allow-msg-body",
        "allow-cloud-custom-data",
        "allow-both-replacements",
        "allow-refused-subscribers",
        "deny",
        "deny-with-info",
        "deny-custom-code-low",
        "deny-custom-code-high",
        "drop",
    ],
)
def test_each_decision_is_answered_as_tencent_reads_it(
    decision: Decision | None, expected: dict[str, Any]
) -> None:
    oa = OARecall()
    seen: list[Callback] = []

    @oa.decider(SEND)
    def decide(callback: Callback) -> Decision | None:
        seen.append(callback)
        return decision

    app = make(oa)
    response = post(app)
    assert answer(response) == expected
    assert list(json.loads(response.data)) == list(expected)  # Tencent's field order
    assert [c.command for c in seen] == [SEND]
    assert seen[0].body["MsgBody"] == TEXT
    assert seen[0].sdk_app_id == SDK_APP_ID


def test_unicode_in_a_decision_is_sent_as_utf8() -> None:
    oa = OARecall()
    oa.decider(SEND)(lambda callback: Decision.deny("不允许", error_code=120002))
    response = post(make(oa))
    assert "不允许".encode() in response.data
    assert answer(response)["ErrorInfo"] == "不允许"


@pytest.mark.parametrize(
    "command",
    [
        SEND,
        CREATE,
        SUBSCRIBE,
        "C2C.CallbackBeforeSendMsg",
        "Group.CallbackBeforeSendMsg",
        "Group.CallbackBeforeCreateGroup",
        "Group.CallbackBeforeApplyJoinGroup",
        "Sns.CallbackPrevFriendAdd",
        "Sns.CallbackPrevFriendResponse",
    ],
)
def test_a_decider_answers_any_before_command(command: str) -> None:
    oa = OARecall()
    oa.decider(command)(lambda callback: Decision.deny(callback.command))
    app = make(oa)
    body = callback_body(command, From_Account="user1", To_Account="user2")
    assert answer(post(app, body)) == {"ActionStatus": "OK", "ErrorCode": 1, "ErrorInfo": command}


@pytest.mark.parametrize(
    "command", [SEND, CREATE, SUBSCRIBE, "C2C.CallbackBeforeSendMsg", "Group.CallbackBeforeSendMsg"]
)
def test_a_before_command_without_a_decider_is_allowed(command: str) -> None:
    oa = OARecall()
    oa.decider("Group.CallbackBeforeCreateGroup")(lambda callback: Decision.deny())
    response = post(make(oa), callback_body(command, From_Account="user1"))
    assert answer(response) == OK


def test_without_an_extension_instance_every_before_command_is_allowed(
    make_app: Any,
) -> None:
    assert answer(post(make_app())) == OK


def test_the_decider_of_one_command_does_not_answer_another() -> None:
    oa = OARecall()
    oa.decider("C2C.CallbackBeforeSendMsg")(lambda callback: Decision.deny())
    assert answer(post(make(oa))) == OK


# -- Decision validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_decision", "error", "words"),
    [
        (lambda: Decision.deny(error_code=0), ValueError, "must be 1 or in [120001, 130000]"),
        (lambda: Decision.deny(error_code=2), ValueError, "Decision.drop()"),
        (lambda: Decision.deny(error_code=3), ValueError, "got 3"),
        (lambda: Decision.deny(error_code=120000), ValueError, "got 120000"),
        (lambda: Decision.deny(error_code=130001), ValueError, "got 130001"),
        (lambda: Decision.deny(error_code=True), TypeError, "error_code must be an int"),
        (lambda: Decision.deny(error_code="1"), TypeError, "error_code must be an int"),
        (lambda: Decision.deny(5), TypeError, "error_info must be a str"),
        (lambda: Decision.allow(msg_body="hi"), TypeError, "msg_body must be a list"),
        (lambda: Decision.allow(msg_body=TEXT[0]), TypeError, "msg_body must be a list"),
        (lambda: Decision.allow(msg_body=5), TypeError, "msg_body must be a list"),
        (lambda: Decision.allow(msg_body=[]), ValueError, "msg_body must hold at least one"),
        (lambda: Decision.allow(msg_body=["hi"]), TypeError, "msg_body[0] must be a message"),
        (
            lambda: Decision.allow(msg_body=[{"MsgContent": {}}]),
            ValueError,
            'msg_body[0] needs a "MsgType"',
        ),
        (
            lambda: Decision.allow(msg_body=[*TEXT, {"MsgType": "TIMTextElem"}]),
            ValueError,
            'msg_body[1] needs a "MsgContent"',
        ),
        (
            lambda: Decision.allow(msg_body=[{"MsgType": "T", "MsgContent": {"x": {1, 2}}}]),
            ValueError,
            "msg_body cannot be sent as JSON",
        ),
        (
            lambda: Decision.allow(msg_body=[{"MsgType": "T", "MsgContent": {"x": float("nan")}}]),
            ValueError,
            "msg_body cannot be sent as JSON",
        ),
        (lambda: Decision.allow(cloud_custom_data={"a": 1}), TypeError, "cloud_custom_data"),
        (lambda: Decision.allow(refused_subscribers="user1"), TypeError, "refused_subscribers"),
        (lambda: Decision.allow(refused_subscribers=5), TypeError, "refused_subscribers"),
        (
            lambda: Decision.allow(refused_subscribers=["user1", 2]),
            TypeError,
            "refused_subscribers[1]",
        ),
        (lambda: Decision.allow(refused_subscribers=[""]), TypeError, "refused_subscribers[0]"),
        (lambda: Decision(7), ValueError, "error_code 7 is not one Tencent defines"),
        (lambda: Decision("0"), TypeError, "error_code must be an int"),
        (
            lambda: Decision(1, "no", cloud_custom_data="x"),
            ValueError,
            "go with an allow only",
        ),
    ],
    ids=[
        "deny-0",
        "deny-2",
        "deny-3",
        "deny-below-custom-range",
        "deny-above-custom-range",
        "deny-bool-code",
        "deny-str-code",
        "deny-info-not-str",
        "msg-body-str",
        "msg-body-single-element",
        "msg-body-int",
        "msg-body-empty",
        "msg-body-element-not-dict",
        "msg-body-no-msgtype",
        "msg-body-no-msgcontent",
        "msg-body-not-json",
        "msg-body-nan",
        "cloud-custom-data-dict",
        "refused-subscribers-str",
        "refused-subscribers-int",
        "refused-subscribers-int-entry",
        "refused-subscribers-empty-entry",
        "direct-undefined-code",
        "direct-str-code",
        "direct-fields-on-deny",
    ],
)
def test_a_bad_decision_is_refused_naming_the_field(
    make_decision: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        make_decision()
    assert words in str(info.value)


def test_a_decision_is_frozen_and_copies_what_it_answers() -> None:
    body = [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}]
    subscribers = ["user1"]
    decision = Decision.allow(msg_body=body, refused_subscribers=subscribers)
    body[0]["MsgContent"] = {"Text": "changed"}
    subscribers.append("user2")
    assert decision.fields() == {
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}],
        "RefusedSubscribers_Account": ["user1"],
    }
    with pytest.raises(AttributeError):
        decision.error_code = 1  # type: ignore[misc]
    assert [Decision.allow().kind, Decision.deny().kind, Decision.drop().kind] == [
        "allow",
        "deny",
        "drop",
    ]


# -- registration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (RECALL_COMMAND, ValueError),
        ("OfficialAccount.CallbackAfterSendMsg", ValueError),
        ("C2C.CallbackAfterSendMsg", ValueError),
        ("State.StateChange", ValueError),
        ("CallbackBeforeSendMsg", ValueError),
        ("", ValueError),
        (None, TypeError),
    ],
    ids=["recall", "oa-after-send", "c2c-after-send", "state", "no-namespace", "empty", "none"],
)
def test_a_decider_for_a_command_that_is_not_before_is_refused(
    command: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"before-command|must be a str"):
        OARecall().decider(command)


def test_a_second_decider_for_the_same_command_is_refused() -> None:
    oa = OARecall()

    @oa.decider(SEND)
    def first(callback: Callback) -> None:
        return None

    with pytest.raises(ValueError, match=r"already has a decider \(.*first\)"):
        oa.decider(SEND)
    make(oa)
    with pytest.raises(ValueError, match="already has a decider"):
        oa.decider(SEND)


def test_two_pending_registrations_for_one_command_are_refused_at_the_second() -> None:
    oa = OARecall()
    register_a, register_b = oa.decider(SEND), oa.decider(SEND)
    register_a(lambda callback: None)
    with pytest.raises(ValueError, match="already has a decider"):
        register_b(lambda callback: None)


def test_a_decider_must_be_callable() -> None:
    with pytest.raises(TypeError, match="a decider must be callable"):
        OARecall().decider(SEND)("not a function")  # type: ignore[type-var]


def test_deciders_registered_after_init_app_and_on_several_apps_count() -> None:
    oa = OARecall()
    first, second = make(oa), make(oa)

    @oa.decider(SEND)
    def deny(callback: Callback) -> Decision:
        return Decision.deny(str(callback.sdk_app_id))

    assert answer(post(first))["ErrorCode"] == 1
    assert answer(post(second))["ErrorCode"] == 1
    assert "app" not in vars(oa)  # the extension keeps no app


@pytest.mark.parametrize(
    ("command", "before"),
    [
        (SEND, True),
        ("Group.CallbackBeforeInviteJoinGroup", True),
        ("Sns.CallbackPrevFriendAdd", True),
        (RECALL_COMMAND, False),
        ("Sns.CallbackFriendAdd", False),
        ("Group.CallbackAfterSendMsg", False),
    ],
)
def test_is_before_command(command: str, before: bool) -> None:
    assert is_before_command(command) is before


# -- configuration ------------------------------------------------------------------------------


def test_decision_defaults() -> None:
    settings = parse_settings({"OA_RECALL_SDKAPPID": 1, **DEFAULTS})
    assert (settings.decision_seconds, settings.decision_fallback, settings.decision_threads) == (
        1.5,
        "allow",
        8,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("OA_RECALL_DECISION_SECONDS", 0),
        ("OA_RECALL_DECISION_SECONDS", -1),
        ("OA_RECALL_DECISION_SECONDS", 2),
        ("OA_RECALL_DECISION_SECONDS", 2.5),
        ("OA_RECALL_DECISION_SECONDS", True),
        ("OA_RECALL_DECISION_SECONDS", "1"),
        ("OA_RECALL_DECISION_FALLBACK", "drop"),
        ("OA_RECALL_DECISION_FALLBACK", None),
        ("OA_RECALL_DECISION_THREADS", 0),
        ("OA_RECALL_DECISION_THREADS", 1.5),
        ("OA_RECALL_DECISION_THREADS", True),
    ],
    ids=[
        "seconds-0",
        "seconds-negative",
        "seconds-2",
        "seconds-above-2",
        "seconds-bool",
        "seconds-str",
        "fallback-drop",
        "fallback-none",
        "threads-0",
        "threads-float",
        "threads-bool",
    ],
)
def test_bad_decision_config_fails_at_start_up_naming_the_key(key: str, value: Any) -> None:
    app = Flask("bad_config")
    app.config.update(OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_STORE="memory://", **{key: value})
    with pytest.raises(ValueError, match=key) as info:
        OARecall(app)
    assert repr(value) in str(info.value)


# -- the checks come first ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "body", "status", "error_code"),
    [
        ({"token": "wrong-token"}, None, 401, 40102),
        ({"token": ""}, None, 401, 40101),
        ({"request_time": 1}, None, 401, 40103),
        ({"sdk_app_id": 1400000001}, None, 403, 40302),
        ({}, b"{not json", 400, 40001),
        ({}, b"[1, 2]", 400, 40001),
        ({"command": SEND}, callback_body(CREATE), 400, 40003),
    ],
    ids=[
        "bad-sign",
        "no-sign",
        "stale",
        "unknown-sdkappid",
        "not-json",
        "not-an-object",
        "command-mismatch",
    ],
)
def test_a_rejected_request_never_reaches_the_decider(
    query: dict[str, Any], body: Any, status: int, error_code: int
) -> None:
    oa = OARecall()
    called: list[Callback] = []
    oa.decider(SEND)(lambda callback: called.append(callback) or Decision.allow())  # type: ignore[func-returns-value]
    app = make(oa)
    url = f"/tencent-im/callback?{signed_query(app, command=query.pop('command', SEND), **query)}"
    data = body if isinstance(body, bytes) else json.dumps(body or send_body())
    response = app.test_client().post(url, data=data)
    response.close()
    assert response.status_code == status
    assert json.loads(response.data)["ActionStatus"] == "FAIL"
    assert json.loads(response.data)["ErrorCode"] == error_code
    assert called == []


# -- the fallback -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fallback", "expected_code"), [("allow", 0), ("deny", 1)], ids=["allow", "deny"]
)
def test_a_raising_decider_gets_the_fallback_and_decision_failed_is_sent(
    fallback: str,
    expected_code: int,
    failures: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    oa = OARecall()

    @oa.decider(SEND)
    def broken(callback: Callback) -> Decision:
        raise RuntimeError("moderation service down, token=s3cret")

    app = make(oa, decision_fallback=fallback)
    with caplog.at_level(logging.ERROR, "flask_oa_recall"):
        response = post(app, close=False)
        body = answer(response)
        assert failures == []  # sent after the answer went out
        response.close()
    assert body["ActionStatus"] == "OK"
    assert body["ErrorCode"] == expected_code
    if fallback == "deny":
        assert body["ErrorInfo"] == (
            f"Denied by OA_RECALL_DECISION_FALLBACK: the decider for {SEND} failed (RuntimeError)."
        )
        assert "s3cret" not in body["ErrorInfo"]
    else:
        assert body == OK
    (failure,) = failures
    assert failure["sender"] is app
    assert failure["command"] == SEND
    assert isinstance(failure["exception"], RuntimeError)
    assert failure["delivery_id"]
    assert f"decider {__name__}.{broken.__qualname__} for {SEND} failed" in caplog.text


def test_a_decider_returning_something_else_gets_the_fallback(
    failures: list[dict[str, Any]],
) -> None:
    oa = OARecall()
    oa.decider(SEND)(lambda callback: {"ErrorCode": 1})
    assert answer(post(make(oa, decision_fallback="deny")))["ErrorCode"] == 1
    (failure,) = failures
    assert isinstance(failure["exception"], TypeError)
    assert "returns a Decision or None, got dict" in str(failure["exception"])


def test_a_decider_that_builds_a_bad_decision_gets_the_fallback(
    failures: list[dict[str, Any]],
) -> None:
    oa = OARecall()
    oa.decider(SEND)(lambda callback: Decision.deny(error_code=99))
    assert answer(post(make(oa))) == OK
    assert isinstance(failures[0]["exception"], ValueError)


def test_a_slow_decider_gets_the_fallback_and_its_late_result_is_logged(
    failures: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    oa = OARecall()
    release = threading.Event()
    finished = threading.Event()

    @oa.decider(SEND)
    def slow(callback: Callback) -> Decision:
        release.wait(10)
        finished.set()
        return Decision.drop()

    app = make(oa, decision_seconds=0.2, decision_fallback="deny")
    with caplog.at_level(logging.WARNING, "flask_oa_recall"):
        body = answer(post(app))
        assert body["ErrorCode"] == 1
        assert "did not answer within 0.2 s" in body["ErrorInfo"]
        (failure,) = failures
        timeout = failure["exception"]
        assert isinstance(timeout, DecisionTimeout)
        assert isinstance(timeout, TimeoutError)
        assert isinstance(timeout, OARecallError)
        assert (timeout.command, timeout.seconds, timeout.delivery_id) == (
            SEND,
            0.2,
            failure["delivery_id"],
        )
        release.set()
        assert finished.wait(5)
        pool = get_state(app).decider_pool(app.config["OA_RECALL_DECISION_THREADS"])
        wait_idle(pool)
    assert "returned drop (ErrorCode 2) after the budget" in caplog.text
    assert "discarded" in caplog.text


def test_a_slow_decider_that_raises_late_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    oa = OARecall()
    release = threading.Event()

    @oa.decider(SEND)
    def slow(callback: Callback) -> Decision:
        release.wait(10)
        raise LookupError("late")

    app = make(oa, decision_seconds=0.1)
    with caplog.at_level(logging.WARNING, "flask_oa_recall"):
        assert answer(post(app)) == OK
        release.set()
        pool = get_state(app).decider_pool(8)
        wait_idle(pool)
    assert "raised after the budget" in caplog.text


def test_a_decider_that_never_returns_holds_one_thread_of_a_bounded_pool(
    failures: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """With every thread held by a stuck decider, the next request is answered the fallback at
    once (no thread started, nothing queued) instead of waiting for the budget."""
    oa = OARecall()
    stuck = threading.Event()

    @oa.decider(SEND)
    def never(callback: Callback) -> None:
        stuck.wait(30)

    app = make(oa, decision_seconds=0.1, decision_threads=2, decision_fallback="deny")

    def deciders() -> int:
        # By name: a store's outcome or checkpoint thread from another test may start or end
        # meanwhile.
        return sum(t.name.startswith("oa-recall-decider-") for t in threading.enumerate())

    threads_before = deciders()
    try:
        with caplog.at_level(logging.ERROR, "flask_oa_recall"):
            for _ in range(2):
                assert answer(post(app))["ErrorCode"] == 1
            for _ in range(3):
                body = answer(post(app))
                assert body["ErrorCode"] == 1
                assert "every decider thread is busy" in body["ErrorInfo"]
        assert deciders() - threads_before == 2
        kinds = [type(f["exception"]) for f in failures]
        assert kinds == [DecisionTimeout] * 2 + [DecidersBusy] * 3
        busy = failures[-1]["exception"]
        assert (busy.command, busy.threads) == (SEND, 2)
        assert "no free decider thread" in caplog.text
    finally:
        stuck.set()
    wait_idle(get_state(app).decider_pool(2))
    assert answer(post(app))["ErrorCode"] == 0  # the threads are free again


def test_a_receiver_of_decision_failed_that_raises_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    oa = OARecall()
    oa.decider(SEND)(lambda callback: 1 / 0)
    app = make(oa)

    def broken(sender: Flask, **kwargs: Any) -> None:
        raise RuntimeError("receiver down")

    with decision_failed.connected_to(broken, app), caplog.at_level(logging.ERROR):
        assert answer(post(app)) == OK
    assert "a receiver of decision_failed raised" in caplog.text


# -- what deciders can use ----------------------------------------------------------------------


def test_an_async_decider_works() -> None:
    oa = OARecall()

    @oa.decider(SUBSCRIBE)
    async def refuse_bots(callback: Callback) -> Decision:
        await asyncio.sleep(0.01)
        accounts = [s["Subscriber_Account"] for s in callback.body["SubscribeAccountList"]]
        return Decision.allow(refused_subscribers=[a for a in accounts if a.startswith("bot")])

    body = callback_body(
        SUBSCRIBE,
        Official_Account="@TOA#_news",
        Operator_Account="admin",
        SubscribeAccountList=[{"Subscriber_Account": a} for a in ("user1", "bot7", "bot9")],
    )
    assert answer(post(make(oa), body)) == {**OK, "RefusedSubscribers_Account": ["bot7", "bot9"]}


def test_a_decider_has_an_app_and_request_context_of_its_own() -> None:
    oa = OARecall()
    seen: dict[str, Any] = {}

    @oa.decider(SEND)
    def look(callback: Callback) -> None:
        g.note = "mine"
        seen.update(
            app=current_app._get_current_object(),  # type: ignore[attr-defined]
            body=request.get_data(),
            command=request.args["CallbackCommand"],
            thread=threading.current_thread().name,
            g=g.note,
        )

    app = make(oa)
    body = send_body()
    post(app, body)
    assert seen["app"] is app
    assert json.loads(seen["body"]) == body
    assert seen["command"] == SEND
    assert seen["thread"].startswith("oa-recall-decider-")
    assert seen["g"] == "mine"


def test_the_pool_is_made_again_in_a_forked_process_and_when_its_size_changes() -> None:
    app = make()
    state = get_state(app)
    pool = state.decider_pool(2)
    assert state.decider_pool(2) is pool
    pool.pid = -1  # as if made in gunicorn's master before the fork
    forked = state.decider_pool(2)
    assert forked is not pool
    assert forked.pid > 0
    resized = state.decider_pool(3)
    assert resized.size == 3


def test_a_result_that_comes_just_before_the_waiter_gives_up_is_used() -> None:
    job = _Job("moderate", SEND, "d1")
    job.finish(Decision.drop(), None)
    assert job.abandon() is False
    assert job.decision == Decision.drop()


def test_a_pool_thread_survives_a_job_that_raises_system_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = DeciderPool(1)
    done = threading.Event()

    def leave() -> None:
        raise SystemExit(3)

    with caplog.at_level(logging.ERROR):
        assert pool.submit(leave)
        wait_idle(pool)
        assert pool.submit(done.set)
        assert done.wait(5)
    pool.shutdown()
    assert "a decider thread's job raised" in caplog.text


# -- what is kept, and when ---------------------------------------------------------------------


def test_a_before_callback_is_kept_and_signalled_only_after_the_answer() -> None:
    oa = OARecall()
    oa.decider(SEND)(lambda callback: Decision.deny("no"))
    app = make(oa)
    heard: list[Callback] = []

    def listen(sender: Flask, callback: Callback, **_: Any) -> None:
        heard.append(callback)

    with callback_received.connected_to(listen, app):
        response = post(app, close=False)
        assert answer(response)["ErrorCode"] == 1
        store = get_state(app).store(get_state(app).settings(app.config))
        assert isinstance(store, MemoryStore)
        assert heard == []
        assert store.deliveries() == []
        response.close()
    assert [c.command for c in heard] == [SEND]
    assert [d.command for d in store.deliveries()] == [SEND]


def test_a_store_that_fails_does_not_change_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    oa = OARecall()
    oa.decider(SEND)(lambda callback: Decision.drop())
    app = make(oa)
    app.config["OA_RECALL_KEEP_COMMANDS"] = [SEND]  # nothing listens: keep it by config
    state = get_state(app)
    store = state.store(state.settings(app.config))

    def down(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    store.begin = down  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        assert answer(post(app))["ErrorCode"] == 2
    assert "failed after its answer" in caplog.text
