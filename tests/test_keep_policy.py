"""The keep policy: what is written to the store, and what is only answered."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import (
    RECALL_COMMAND,
    MessageSentEvent,
    callback_received,
    message_sent,
    messages_recalled,
)
from flask_oa_recall.cli.check import run_checks
from flask_oa_recall.config import parse_settings
from flask_oa_recall.state import get_state
from flask_oa_recall.store import Store
from flask_oa_recall.testing import (
    after_send_msg_body,
    callback_body,
    capture,
    capture_callbacks,
    post_callback,
    recall_body,
)

from .conftest import SDK_APP_ID, AppFactory

SEND = "OfficialAccount.CallbackAfterSendMsg"
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


def store_of(app: Flask) -> Store:
    state = get_state(app)
    return state.store(state.settings(app.config))


def post(app: Flask, body: dict[str, Any]) -> Any:
    return post_callback(app.test_client(), app, body)


def kept_commands(app: Flask) -> list[str]:
    return [d.command for d in store_of(app).deliveries()]


def test_a_callback_nobody_listens_to_is_answered_without_a_store_write(app: Flask) -> None:
    for body in (after_send_msg_body("1_1_1"), callback_body("State.StateChange", Info={})):
        response = post(app, body)
        assert response.status_code == 200
        assert response.json == OK
    assert kept_commands(app) == []


def test_the_recall_is_kept_with_no_receiver_at_all(app: Flask) -> None:
    assert post(app, recall_body(["1_1_1"])).status_code == 200
    assert kept_commands(app) == [RECALL_COMMAND]


def test_a_callback_received_receiver_keeps_every_command(app: Flask) -> None:
    with capture_callbacks(app) as callbacks:
        post(app, after_send_msg_body("1_1_1"))
        post(app, callback_body("State.StateChange"))
    assert [c.command for c in callbacks] == [SEND, "State.StateChange"]
    assert sorted(kept_commands(app)) == [SEND, "State.StateChange"]
    # callback_received alone does not type the event: no dedup keys, no load.
    assert [d.msg_keys for d in store_of(app).deliveries()] == [(), ()]


def test_a_typed_receiver_keeps_its_command_only(app: Flask) -> None:
    seen: list[MessageSentEvent] = []

    def on_sent(sender: Flask, event: MessageSentEvent, **_: Any) -> None:
        seen.append(event)

    with message_sent.connected_to(on_sent, app):
        post(app, after_send_msg_body("1_1_1"))
        post(app, callback_body("OfficialAccount.CallbackAfterAddSubscriber"))
    assert [e.msg_key for e in seen] == ["1_1_1"]
    (delivery,) = store_of(app).deliveries()
    assert delivery.command == SEND
    assert delivery.msg_keys == ("AfterSendMsg:1_1_1",)


def test_a_receiver_of_another_app_does_not_count(make_app: AppFactory) -> None:
    app, other = make_app(), make_app()

    def on_sent(sender: Flask, **_: Any) -> None:
        raise AssertionError("not for this app")

    with message_sent.connected_to(on_sent, other), callback_received.connected_to(on_sent, other):
        assert post(app, after_send_msg_body("1_1_1")).status_code == 200
    assert kept_commands(app) == []


def test_keep_commands_keeps_a_command_nobody_listens_to(make_app: AppFactory) -> None:
    app = make_app(keep_commands=["State.StateChange"])
    post(app, callback_body("State.StateChange"))
    post(app, after_send_msg_body("1_1_1"))
    assert kept_commands(app) == ["State.StateChange"]


def test_keep_commands_star_keeps_everything(make_app: AppFactory) -> None:
    app = make_app(keep_commands=["*"])
    post(app, callback_body("State.StateChange"))
    post(app, after_send_msg_body("1_1_1"))
    assert sorted(kept_commands(app)) == [SEND, "State.StateChange"]


def test_skip_commands_runs_receivers_without_keeping(make_app: AppFactory) -> None:
    app = make_app(skip_commands=[SEND])
    seen: list[str] = []

    def on_sent(sender: Flask, event: MessageSentEvent, **_: Any) -> None:
        seen.append(event.msg_key)

    with message_sent.connected_to(on_sent, app):
        for _ in range(2):
            assert post(app, after_send_msg_body("1_1_1")).status_code == 200
    # Not kept, so not deduplicated either: that is what skipping means.
    assert seen == ["1_1_1", "1_1_1"]
    assert kept_commands(app) == []


def test_a_skipped_command_whose_receiver_fails_is_still_answered_ok(
    make_app: AppFactory,
) -> None:
    app = make_app(skip_commands=[SEND])

    def broken(sender: Flask, **_: Any) -> None:
        raise RuntimeError("down")

    with message_sent.connected_to(broken, app), capture(app) as seen:
        response = post(app, after_send_msg_body("1_1_1"))
    assert response.status_code == 200
    assert [f.signal_name for f in seen.failures] == ["message_sent"]
    assert kept_commands(app) == []


def test_a_recall_receiver_still_keeps_the_recall_under_a_skip_list(make_app: AppFactory) -> None:
    app = make_app(skip_commands=["State.StateChange"])
    with messages_recalled.connected_to(lambda sender, **kw: None, app):
        post(app, recall_body(["1_1_1"]))
    post(app, callback_body("State.StateChange"))
    assert kept_commands(app) == [RECALL_COMMAND]


BAD_POLICIES = [
    (
        {"OA_RECALL_SKIP_COMMANDS": [RECALL_COMMAND]},
        ValueError,
        "OA_RECALL_SKIP_COMMANDS names OfficialAccount.CallbackAfterMsgWithDraw: the recall is"
        " always kept",
    ),
    ({"OA_RECALL_SKIP_COMMANDS": ["*"]}, ValueError, "OA_RECALL_SKIP_COMMANDS cannot hold '*'"),
    (
        {"OA_RECALL_KEEP_COMMANDS": SEND},
        TypeError,
        "OA_RECALL_KEEP_COMMANDS must be a list of CallbackCommand names, got str: wrap it",
    ),
    (
        {"OA_RECALL_SKIP_COMMANDS": 3},
        TypeError,
        "OA_RECALL_SKIP_COMMANDS must be a list of CallbackCommand names, got int.",
    ),
    (
        {"OA_RECALL_KEEP_COMMANDS": [""]},
        ValueError,
        "OA_RECALL_KEEP_COMMANDS holds '', which is not a CallbackCommand name.",
    ),
    ({"OA_RECALL_KEEP_COMMANDS": [" X.Y"]}, ValueError, "OA_RECALL_KEEP_COMMANDS holds ' X.Y'"),
    ({"OA_RECALL_SKIP_COMMANDS": [None]}, ValueError, "OA_RECALL_SKIP_COMMANDS holds None"),
    (
        {"OA_RECALL_KEEP_COMMANDS": [SEND], "OA_RECALL_SKIP_COMMANDS": [SEND]},
        ValueError,
        f"{SEND} is in both OA_RECALL_KEEP_COMMANDS and OA_RECALL_SKIP_COMMANDS.",
    ),
]


@pytest.mark.parametrize(
    ("config", "error", "message"),
    BAD_POLICIES,
    ids=[
        "skip-recall",
        "skip-star",
        "keep-string",
        "skip-int",
        "keep-empty",
        "keep-spaces",
        "skip-none",
        "in-both",
    ],
)
def test_a_bad_keep_policy_fails_at_init_naming_the_key(
    make_app: AppFactory, config: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        parse_settings({"OA_RECALL_SDKAPPID": SDK_APP_ID, **config})
    assert str(raised.value).startswith(message)
    with pytest.raises(error):
        make_app(**{k.removeprefix("OA_RECALL_").lower(): v for k, v in config.items()})


def test_the_policy_defaults_and_accepted_forms() -> None:
    settings = parse_settings(
        {
            "OA_RECALL_SDKAPPID": SDK_APP_ID,
            "OA_RECALL_KEEP_COMMANDS": ("State.StateChange",),
            "OA_RECALL_SKIP_COMMANDS": {SEND},
        }
    )
    assert settings.keeps(RECALL_COMMAND, listened=False)
    assert settings.keeps("State.StateChange", listened=False)
    assert not settings.keeps(SEND, listened=True)
    assert settings.keeps("Sns.CallbackFriendAdd", listened=True)
    assert not settings.keeps("Sns.CallbackFriendAdd", listened=False)
    default = parse_settings({"OA_RECALL_SDKAPPID": SDK_APP_ID, "OA_RECALL_KEEP_COMMANDS": None})
    assert default.keep_commands == default.skip_commands == frozenset()


def keep_lines(app: Flask) -> list[str]:
    return [f.text for f in run_checks(app) if f.topic == "keep" and f.level == "OK"]


def test_check_reports_the_default_policy(app: Flask) -> None:
    assert keep_lines(app) == [
        f"{RECALL_COMMAND}: always kept",
        "any other command: answered, not kept (nothing listens to it; no store write)",
    ]


def test_check_reports_listened_commands_and_the_config_lists(make_app: AppFactory) -> None:
    app = make_app(keep_commands=["State.StateChange"], skip_commands=["C2C.CallbackAfterSendMsg"])

    def on_sent(sender: Flask, **_: Any) -> None: ...

    with message_sent.connected_to(on_sent, app):
        lines = keep_lines(app)
        receivers = [f.text for f in run_checks(app) if f.topic == "receivers"]
    assert lines == [
        f"{RECALL_COMMAND}: always kept",
        "never kept (OA_RECALL_SKIP_COMMANDS): C2C.CallbackAfterSendMsg; their receivers run"
        " without dedup, and a failure cannot be replayed",
        "always kept (OA_RECALL_KEEP_COMMANDS): State.StateChange",
        f"kept while their receivers listen: {SEND}",
        "any other command: answered, not kept (nothing listens to it; no store write)",
    ]
    assert any(text.startswith("message_sent: ") and "on_sent" in text for text in receivers)


def test_check_reports_keep_all_and_callback_received(make_app: AppFactory) -> None:
    assert keep_lines(make_app(keep_commands=["*"]))[1:] == [
        "every other command: kept (OA_RECALL_KEEP_COMMANDS = ['*'])"
    ]
    app = make_app()
    with capture(app):
        assert keep_lines(app)[1:] == [
            "every other command: kept, because callback_received has receivers"
        ]


def test_check_command_prints_the_policy(make_app: AppFactory) -> None:
    app = make_app(skip_commands=[SEND])
    result = app.test_cli_runner().invoke(args=["oa-recall", "check"])
    assert "keep" in result.output
    assert f"never kept (OA_RECALL_SKIP_COMMANDS): {SEND}" in result.output


def test_a_before_callback_nobody_listens_to_is_decided_and_not_kept(tmp_path: Any) -> None:
    from flask_oa_recall import Decision, OARecall

    oa = OARecall()
    oa.decider("OfficialAccount.CallbackBeforeSendMsg")(lambda callback: Decision.deny("no"))
    app = Flask("before_host", instance_path=str(tmp_path))
    app.config.update(
        OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_TOKENS=["t0ken"], OA_RECALL_STORE="memory://"
    )
    oa.init_app(app)
    body = callback_body(
        "OfficialAccount.CallbackBeforeSendMsg", Official_Account="@TOA#_x", MsgBody=[]
    )
    response = post(app, body)
    assert response.status_code == 200
    assert response.json["ErrorCode"] == 1
    response.close()
    assert kept_commands(app) == []
