"""Testing a host's deciders: the before-command builders, ``decision_of``, the captured
``decision_failed``, the pytest fixtures, and ``send``'s options for before-commands."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import Callback, Decision, DecisionTimeout, OARecall
from flask_oa_recall.pytest_plugin import OARecallDecide
from flask_oa_recall.testing import (
    BEFORE_ADD_SUBSCRIBER_COMMAND,
    BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND,
    BEFORE_SEND_MSG_COMMAND,
    C2C_BEFORE_SEND_MSG_COMMAND,
    GROUP_BEFORE_SEND_MSG_COMMAND,
    Captured,
    DecisionFailure,
    before_add_subscriber_body,
    before_callback_body,
    before_create_official_account_body,
    before_send_msg_body,
    c2c_before_send_msg_body,
    capture,
    decision_of,
    group_before_send_msg_body,
    post_callback,
)

from .conftest import SDK_APP_ID, TOKEN

TEXT = [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hello"}}]


def moderated_app(**config: Any) -> Flask:
    """An app whose deciders echo what they were given, so each body's fields can be checked."""
    oa = OARecall()
    seen: list[Callback] = []

    def remember(callback: Callback) -> Decision | None:
        seen.append(callback)
        text = str(callback.body.get("MsgBody"))
        if "forbidden" in text:
            return Decision.deny("Blocked by moderation.", error_code=120005)
        if "slow" in text:
            time.sleep(0.5)
        if "boom" in text:
            raise RuntimeError("boom")
        return None

    for command in (
        BEFORE_SEND_MSG_COMMAND,
        BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND,
        C2C_BEFORE_SEND_MSG_COMMAND,
        GROUP_BEFORE_SEND_MSG_COMMAND,
    ):
        oa.decider(command)(remember)

    @oa.decider(BEFORE_ADD_SUBSCRIBER_COMMAND)
    def refuse_bots(callback: Callback) -> Decision:
        seen.append(callback)
        accounts = [s["Subscriber_Account"] for s in callback.body["SubscribeAccountList"]]
        return Decision.allow(refused_subscribers=[a for a in accounts if a.startswith("bot")])

    app = Flask("moderated")
    app.config.update(
        TESTING=True,
        OA_RECALL_SDKAPPID=SDK_APP_ID,
        OA_RECALL_TOKENS=[TOKEN],
        OA_RECALL_STORE="memory://",
        **{f"OA_RECALL_{k.upper()}": v for k, v in config.items()},
    )
    oa.init_app(app)
    app.extensions["seen"] = seen
    return app


@pytest.fixture
def app() -> Flask:
    """This module's app (overrides the conftest's): one with deciders."""
    return moderated_app()


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (
            before_create_official_account_body("news", owner="owner1", operator="admin"),
            {"Name": "news", "Owner_Account": "owner1", "Operator_Account": "admin"},
        ),
        (
            before_add_subscriber_body(["user1", "bot2"], official_account="@TOA#_news"),
            {
                "Official_Account": "@TOA#_news",
                "Operator_Account": "admin",
                "SubscribeAccountList": [
                    {"Subscriber_Account": "user1"},
                    {"Subscriber_Account": "bot2"},
                ],
            },
        ),
        (
            before_send_msg_body(official_account="@TOA#_news", cloud_custom_data="x"),
            {
                "Official_Account": "@TOA#_news",
                "OnlineOnlyFlag": 0,
                "MsgBody": TEXT,
                "CloudCustomData": "x",
            },
        ),
        (
            c2c_before_send_msg_body(msg_time=1557481126, online_only=True),
            {
                "From_Account": "user1",
                "To_Account": "user2",
                "MsgSeq": 48374,
                "MsgRandom": 2837546,
                "MsgTime": 1557481126,
                "MsgKey": "48374_2837546_1557481126",
                "OnlineOnlyFlag": 1,
                "MsgBody": TEXT,
                "CloudCustomData": "",
            },
        ),
        (
            group_before_send_msg_body(group_id="@TGS#2J4SZEAEL"),
            {
                "GroupId": "@TGS#2J4SZEAEL",
                "Type": "Public",
                "From_Account": "user1",
                "Operator_Account": "user1",
                "Random": 123456,
                "OnlineOnlyFlag": 0,
                "MsgBody": TEXT,
                "CloudCustomData": "",
            },
        ),
    ],
    ids=["oa-create", "oa-add-subscriber", "oa-send", "c2c-send", "group-send"],
)
def test_each_builder_reaches_its_decider_with_tencents_fields(
    app: Flask, body: dict[str, Any], fields: dict[str, Any]
) -> None:
    decision = decision_of(post_callback(app.test_client(), app, body))
    (callback,) = app.extensions["seen"]
    assert callback.command == body["CallbackCommand"]
    assert {k: callback.body[k] for k in fields} == fields
    assert isinstance(callback.body["EventTime"], int)
    expected = (
        Decision.allow(refused_subscribers=["bot2"])
        if callback.command == BEFORE_ADD_SUBSCRIBER_COMMAND
        else Decision.allow()
    )
    assert decision == expected


def test_a_builder_takes_a_whole_msg_body() -> None:
    elements = [{"MsgType": "TIMFaceElem", "MsgContent": {"Index": 1, "Data": "smile"}}]
    assert before_send_msg_body(msg_body=elements)["MsgBody"] == elements
    assert c2c_before_send_msg_body(msg_body=elements)["MsgBody"] == elements


@pytest.mark.parametrize(
    ("command", "field", "value"),
    [
        (BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND, "Name", "hi"),
        (BEFORE_ADD_SUBSCRIBER_COMMAND, "SubscribeAccountList", [{"Subscriber_Account": "u9"}]),
        (BEFORE_SEND_MSG_COMMAND, "Official_Account", "@TOA#_x"),
        (C2C_BEFORE_SEND_MSG_COMMAND, "To_Account", "user2"),
        (GROUP_BEFORE_SEND_MSG_COMMAND, "GroupId", "@TGS#_test"),
        ("Group.CallbackBeforeCreateGroup", "MsgBody", [{**TEXT[0], "MsgContent": {"Text": "hi"}}]),
    ],
)
def test_before_callback_body_builds_any_before_command(
    command: str, field: str, value: Any
) -> None:
    body = before_callback_body(command, text="hi", official_account="@TOA#_x", subscribers=["u9"])
    assert body["CallbackCommand"] == command
    assert body[field] == value


def test_decision_of_reads_every_field_of_the_answer(app: Flask) -> None:
    client = app.test_client()
    denied = post_callback(client, app, before_send_msg_body("forbidden"))
    assert decision_of(denied) == Decision.deny("Blocked by moderation.", error_code=120005)
    refused = post_callback(client, app, before_add_subscriber_body(["bot1", "user2"]))
    assert decision_of(refused) == Decision.allow(refused_subscribers=["bot1"])
    assert decision_of(refused).fields() == {"RefusedSubscribers_Account": ["bot1"]}


@pytest.mark.parametrize(
    ("options", "shown"),
    [({"token": "wrong"}, "HTTP 401"), ({"sdk_app_id": 1}, "HTTP 403")],
    ids=["bad-sign", "unknown-sdkappid"],
)
def test_decision_of_a_refused_request_fails_the_test_with_the_answer(
    app: Flask, options: dict[str, Any], shown: str
) -> None:
    response = post_callback(app.test_client(), app, before_send_msg_body(), **options)
    with pytest.raises(AssertionError, match=f"not a decision: {shown}") as info:
        decision_of(response)
    assert '"ActionStatus":"FAIL"' in str(info.value)
    assert app.extensions["seen"] == []


def test_capture_sees_decision_failed_when_post_callback_returns() -> None:
    app = moderated_app(decision_seconds=0.1, decision_fallback="deny")
    with capture(app) as seen:
        response = post_callback(app.test_client(), app, before_send_msg_body("slow"))
        failures = list(seen.decision_failures)
        kept = [c.command for c in seen.callbacks]
    assert decision_of(response).error_code == 1
    (failure,) = failures
    assert isinstance(failure, DecisionFailure)
    assert failure.command == BEFORE_SEND_MSG_COMMAND
    assert isinstance(failure.exception, DecisionTimeout)
    assert failure.delivery_id
    assert kept == [BEFORE_SEND_MSG_COMMAND]  # callback_received ran too, after the answer


# The fixtures, in this suite's own process (this module's ``app``).


def test_oa_recall_decide_posts_a_before_send_by_default(
    app: Flask, oa_recall_decide: OARecallDecide
) -> None:
    assert oa_recall_decide() == Decision.allow()
    assert oa_recall_decide(before_send_msg_body("forbidden")) == Decision.deny(
        "Blocked by moderation.", error_code=120005
    )
    assert [c.command for c in app.extensions["seen"]] == [BEFORE_SEND_MSG_COMMAND] * 2


def test_oa_recall_decide_fails_for_a_refused_request(oa_recall_decide: OARecallDecide) -> None:
    with pytest.raises(AssertionError, match="not a decision: HTTP 401"):
        oa_recall_decide(token="a-guess")


def test_oa_recall_decision_failures(
    oa_recall_decide: OARecallDecide,
    oa_recall_decision_failures: list[DecisionFailure],
    oa_recall_captured: Captured,
) -> None:
    assert oa_recall_decide(before_send_msg_body("boom")) == Decision.allow()
    assert [type(f.exception) for f in oa_recall_decision_failures] == [RuntimeError]
    assert oa_recall_decision_failures is oa_recall_captured.decision_failures


# The same, as a host project uses them: installed, loaded by the entry point.

HOST_APP = """
import json

from flask import Flask
from flask_oa_recall import Decision, OARecall

oa = OARecall()


@oa.decider("OfficialAccount.CallbackBeforeSendMsg")
def moderate(callback):
    if "forbidden" in json.dumps(callback.body.get("MsgBody")):
        return Decision.deny("Blocked by moderation.")
    return None


def create_app():
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        OA_RECALL_SDKAPPID=1400000000,
        OA_RECALL_TOKENS=["console-token"],
        OA_RECALL_STORE="memory://",
    )
    oa.init_app(app)
    return app
"""

HOST_TEST = """
import pytest
from flask_oa_recall import Decision
from flask_oa_recall.testing import before_send_msg_body
from myapp import create_app


@pytest.fixture
def app():
    return create_app()


def test_moderation(oa_recall_decide, oa_recall_decision_failures):
    assert oa_recall_decide(before_send_msg_body("forbidden")) == Decision.deny(
        "Blocked by moderation."
    )
    assert oa_recall_decide(before_send_msg_body("fine")) == Decision.allow()
    assert oa_recall_decision_failures == []
"""


def test_a_host_project_tests_its_decider_with_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\naddopts = --strict-markers --strict-config\nfilterwarnings =\n    error\n"
    )
    pytester.makepyfile(myapp=HOST_APP, test_moderation=HOST_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1)


# send's options for before-commands, refused before anything is sent


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "hi"], "--text goes with a before-command or"),
        (["--command", "State.StateChange", "--subscriber", "u1"], "goes with a before-command"),
        (["--text", "hi", "--body", "-"], "cannot go with --body"),
    ],
    ids=["text-with-recall", "subscriber-with-other", "text-with-body"],
)
def test_send_refuses_before_options_where_they_mean_nothing(
    app: Flask, args: list[str], message: str
) -> None:
    result = app.test_cli_runner().invoke(args=["oa-recall", "send", *args], input=b"{}")
    assert result.exit_code == 2
    assert message in result.output
