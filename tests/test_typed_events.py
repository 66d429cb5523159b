"""The typed Official Account "after" events: loading, signals, dedup, failures and replay."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from blinker import Signal
from flask import Flask

import flask_oa_recall as oa
from flask_oa_recall import callback_received
from flask_oa_recall.kinds import KINDS, canonical_json, digest_identity
from flask_oa_recall.state import get_state
from flask_oa_recall.store import Store
from flask_oa_recall.testing import (
    after_add_subscriber_body,
    after_create_body,
    after_delete_subscriber_body,
    after_destroyed_body,
    after_full_body,
    after_info_changed_body,
    after_send_msg_body,
    capture,
    capture_callbacks,
    capture_events,
    post_callback,
    recall_body,
    signed_query,
    typed_body,
)

from .conftest import SDK_APP_ID, AppFactory

EVENT_TIME = 1670574414123
WHEN = datetime(2022, 12, 9, 8, 26, 54, 123000, tzinfo=timezone.utc)
ACCOUNT = "@TOA#_test_for_penn"

#: One realistic body per typed command (field lists from PROTOCOL.md §4.1), the signal it is
#: sent through, the event type and the event's own fields.
CASES: list[tuple[dict[str, Any], Signal, type, dict[str, Any]]] = [
    (
        {
            "CallbackCommand": "OfficialAccount.CallbackAfterSendMsg",
            "Official_Account": ACCOUNT,
            "MsgKey": "71_1_1698741698",
            "MsgTime": 1698741698,
            "OnlineOnlyFlag": 0,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hello"}}],
            "CloudCustomData": "your cloud custom data",
            "EventTime": EVENT_TIME,
        },
        oa.message_sent,
        oa.MessageSentEvent,
        {
            "msg_key": "71_1_1698741698",
            "msg_time": 1698741698,
            "online_only": False,
            "msg_body": ({"MsgType": "TIMTextElem", "MsgContent": {"Text": "hello"}},),
            "cloud_custom_data": "your cloud custom data",
            "text": "hello",
            "sent_at": datetime(2023, 10, 31, 8, 41, 38, tzinfo=timezone.utc),
        },
    ),
    (
        {
            "CallbackCommand": "OfficialAccount.CallbackAfterCreateOfficialAccount",
            "Official_Account": ACCOUNT,
            "Operator_Account": "admin",
            "Owner_Account": "owner1",
            "Name": "News",
            "EventTime": EVENT_TIME,
        },
        oa.official_account_created,
        oa.OfficialAccountCreatedEvent,
        {"operator_account": "admin", "owner_account": "owner1", "name": "News"},
    ),
    (
        {
            "CallbackCommand": "OfficialAccount.CallbackAfterOfficialAccountInfoChanged",
            "Official_Account": ACCOUNT,
            "Operator_Account": "admin",
            "Name": "Daily News",
            "Introduction": "News, daily.",
            "FaceUrl": "https://example.com/face.png",
            "Organization": "Example Ltd",
            "EventTime": EVENT_TIME,
        },
        oa.official_account_changed,
        oa.OfficialAccountChangedEvent,
        {
            "operator_account": "admin",
            "name": "Daily News",
            "introduction": "News, daily.",
            "face_url": "https://example.com/face.png",
            "organization": "Example Ltd",
            "changed": {
                "Name": "Daily News",
                "Introduction": "News, daily.",
                "FaceUrl": "https://example.com/face.png",
                "Organization": "Example Ltd",
            },
        },
    ),
    (
        {
            "CallbackCommand": "OfficialAccount.CallbackAfterOfficialAccountDestroyed",
            "Official_Account": ACCOUNT,
            "Owner_Account": "owner1",
            "Name": "News",
            "EventTime": EVENT_TIME,
        },
        oa.official_account_destroyed,
        oa.OfficialAccountDestroyedEvent,
        {"owner_account": "owner1", "name": "News"},
    ),
    (
        {
            "CallbackCommand": "OfficialAccount.CallbackAfterAddSubscriber",
            "Official_Account": ACCOUNT,
            "Operator_Account": "admin",
            "SubscribeAccountList": [
                {"Subscriber_Account": "user1"},
                {"Subscriber_Account": "user2"},
            ],
            "EventTime": EVENT_TIME,
        },
        oa.subscribers_added,
        oa.SubscribersAddedEvent,
        {"operator_account": "admin", "subscribers": ("user1", "user2")},
    ),
    (
        {
            "CallbackCommand": "OfficialAccount.CallbackAfterDeleteSubscriber",
            "Official_Account": ACCOUNT,
            "Operator_Account": "user1",
            "SubscribeAccountList": [{"Subscriber_Account": "user1"}],
            "EventTime": EVENT_TIME,
        },
        oa.subscribers_deleted,
        oa.SubscribersDeletedEvent,
        {"operator_account": "user1", "subscribers": ("user1",)},
    ),
    (
        {
            "CallbackCommand": "OfficialAccount.CallbackAfterOfficialAccountFull",
            "Official_Account": ACCOUNT,
            "EventTime": EVENT_TIME,
        },
        oa.subscriber_limit_reached,
        oa.SubscriberLimitReachedEvent,
        {},
    ),
]
IDS = [case[0]["CallbackCommand"].rpartition(".")[2] for case in CASES]


def store_of(app: Flask) -> Store:
    state = get_state(app)
    return state.store(state.settings(app.config))


def post(app: Flask, body: dict[str, Any] | bytes, **query: Any) -> Any:
    return post_callback(app.test_client(), app, body, **query)


@pytest.fixture
def recorded() -> Iterator[Callable[[Signal, Flask], list[tuple[Flask, Any]]]]:
    """Connect a recording receiver to a signal for an app; disconnected after the test."""
    connected: list[tuple[Signal, Any]] = []

    def connect(signal: Signal, app: Flask) -> list[tuple[Flask, Any]]:
        seen: list[tuple[Flask, Any]] = []

        def record(sender: Flask, event: Any, **_: Any) -> None:
            seen.append((sender, event))

        record.__qualname__ = f"record_{len(connected)}"
        signal.connect(record, app, weak=False)
        connected.append((signal, record))
        return seen

    yield connect
    for signal, receiver in connected:
        signal.disconnect(receiver)


def test_every_official_account_after_command_is_typed() -> None:
    commands = {case[0]["CallbackCommand"] for case in CASES} | {oa.RECALL_COMMAND}
    assert set(KINDS) == commands
    for name in ("message_sent", "subscribers_added", "official_account_changed"):
        assert getattr(oa, name) in {kind.signal for kind in KINDS.values()}


@pytest.mark.parametrize(("body", "signal", "event_type", "own"), CASES, ids=IDS)
def test_a_realistic_body_becomes_its_typed_event(
    app: Flask,
    recorded: Callable[[Signal, Flask], list[tuple[Flask, Any]]],
    body: dict[str, Any],
    signal: Signal,
    event_type: type,
    own: dict[str, Any],
) -> None:
    seen = recorded(signal, app)
    response = post(app, body, client_ip="203.0.113.9", platform="iOS")
    assert response.status_code == 200
    assert response.json == {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
    ((sender, event),) = seen
    assert sender is app
    assert type(event) is event_type
    assert event.official_account == ACCOUNT
    assert event.event_time == WHEN
    assert event.event_time_ms == EVENT_TIME
    assert event.sdk_app_id == SDK_APP_ID
    assert event.platform == "iOS"
    assert event.client_ip == "203.0.113.9"
    assert event.raw == body
    (delivery,) = store_of(app).deliveries()
    assert event.delivery_id == delivery.id
    assert delivery.official_account == ACCOUNT
    assert delivery.msg_keys == (event.dedup_key,)
    assert delivery.status == "done"
    for name, value in own.items():
        assert getattr(event, name) == value, name
    with pytest.raises(AttributeError):
        event.official_account = "other"


@pytest.mark.parametrize(("body", "signal", "event_type", "own"), CASES, ids=IDS)
def test_event_time_may_be_a_string_and_unknown_fields_are_kept(
    app: Flask,
    recorded: Callable[[Signal, Flask], list[tuple[Flask, Any]]],
    body: dict[str, Any],
    signal: Signal,
    event_type: type,
    own: dict[str, Any],
) -> None:
    seen = recorded(signal, app)
    sent = {**body, "EventTime": str(EVENT_TIME), "NewField": {"x": 1}}
    assert post(app, sent).status_code == 200
    ((_, event),) = seen
    assert event.event_time == WHEN
    assert event.raw["NewField"] == {"x": 1}


ODD_OPTIONAL = [
    (
        "OfficialAccount.CallbackAfterSendMsg",
        {
            "MsgKey": "1_1_1",
            "MsgTime": "soon",
            "OnlineOnlyFlag": "maybe",
            "MsgBody": "text",
            "CloudCustomData": 7,
        },
        {"msg_time": None, "online_only": False, "msg_body": (), "cloud_custom_data": None},
    ),
    (
        "OfficialAccount.CallbackAfterSendMsg",
        {
            "MsgKey": "1_1_2",
            "MsgTime": "1698741698",
            "OnlineOnlyFlag": "1",
            "MsgBody": [{"MsgType": "TIMFaceElem"}, "junk"],
        },
        {
            "msg_time": 1698741698,
            "online_only": True,
            "msg_body": ({"MsgType": "TIMFaceElem"},),
            "text": "",
        },
    ),
    (
        "OfficialAccount.CallbackAfterCreateOfficialAccount",
        {"Name": 5, "Owner_Account": None},
        {"name": None, "owner_account": None},
    ),
    (
        "OfficialAccount.CallbackAfterOfficialAccountInfoChanged",
        {"FaceUrl": "https://x/y"},
        {"face_url": "https://x/y", "name": None, "changed": {"FaceUrl": "https://x/y"}},
    ),
    (
        "OfficialAccount.CallbackAfterAddSubscriber",
        {
            "SubscribeAccountList": [
                {"Subscriber_Account": "u1"},
                {"Other": 1},
                3,
                {"Subscriber_Account": ""},
            ]
        },
        {"subscribers": ("u1",)},
    ),
    (
        "OfficialAccount.CallbackAfterDeleteSubscriber",
        {"SubscribeAccountList": "u1"},
        {"subscribers": ()},
    ),
]


@pytest.mark.parametrize(
    ("command", "fields", "expected"),
    ODD_OPTIONAL,
    ids=[
        "send-odd",
        "send-strings",
        "create-odd",
        "changed-partial",
        "add-odd-entries",
        "delete-not-a-list",
    ],
)
def test_odd_optional_fields_never_refuse_an_after_callback(
    app: Flask,
    recorded: Callable[[Signal, Flask], list[tuple[Flask, Any]]],
    command: str,
    fields: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    seen = recorded(KINDS[command].signal, app)
    body = {"CallbackCommand": command, "Official_Account": ACCOUNT, "EventTime": 1, **fields}
    response = post(app, body)
    assert response.status_code == 200, response.json
    ((_, event),) = seen
    for name, value in expected.items():
        assert getattr(event, name) == value, name
    assert event.raw == body


MALFORMED = [
    (
        "OfficialAccount.CallbackAfterSendMsg",
        {"Official_Account": ACCOUNT, "EventTime": 1},
        "MsgKey: Missing data for required field.",
    ),
    (
        "OfficialAccount.CallbackAfterSendMsg",
        {"Official_Account": ACCOUNT, "EventTime": 1, "MsgKey": ""},
        "MsgKey: ",
    ),
    (
        "OfficialAccount.CallbackAfterSendMsg",
        {"Official_Account": ACCOUNT, "EventTime": 1, "MsgKey": 71},
        "MsgKey: Not a valid string.",
    ),
    (
        "OfficialAccount.CallbackAfterAddSubscriber",
        {"EventTime": 1},
        "Official_Account: Missing data for required field.",
    ),
    (
        "OfficialAccount.CallbackAfterOfficialAccountFull",
        {"Official_Account": "", "EventTime": 1},
        "Official_Account: ",
    ),
    (
        "OfficialAccount.CallbackAfterOfficialAccountDestroyed",
        {"Official_Account": ACCOUNT},
        "EventTime: Missing data for required field.",
    ),
    (
        "OfficialAccount.CallbackAfterCreateOfficialAccount",
        {"Official_Account": ACCOUNT, "EventTime": "soon"},
        "EventTime: Not a millisecond Unix time.",
    ),
    (
        "OfficialAccount.CallbackAfterOfficialAccountInfoChanged",
        {"Official_Account": ACCOUNT, "EventTime": -1},
        "EventTime: Out of range.",
    ),
]


@pytest.mark.parametrize(
    ("command", "fields", "info"),
    MALFORMED,
    ids=[
        "send-no-msgkey",
        "send-empty-msgkey",
        "send-int-msgkey",
        "add-no-account",
        "full-empty-account",
        "destroyed-no-time",
        "create-word-time",
        "changed-negative-time",
    ],
)
def test_a_typed_body_missing_its_identity_is_refused(
    app: Flask,
    recorded: Callable[[Signal, Flask], list[tuple[Flask, Any]]],
    command: str,
    fields: dict[str, Any],
    info: str,
) -> None:
    seen = recorded(KINDS[command].signal, app)
    with capture(app) as captured:
        response = post(app, {"CallbackCommand": command, **fields})
    assert response.status_code == 400
    assert response.json["ActionStatus"] == "FAIL"
    assert response.json["ErrorCode"] == oa.REJECTIONS["invalid_payload"].error_code
    assert response.json["ErrorInfo"].startswith(info)
    assert [r.reason for r in captured.rejections] == ["invalid_payload"]
    assert seen == []
    assert store_of(app).deliveries() == []


def test_a_malformed_typed_body_nobody_types_is_answered_like_any_other_command(
    app: Flask,
) -> None:
    """Without a receiver of its typed signal the body is not loaded (that is the cost the keep
    policy saves), so what only the typed event needs is not checked."""
    body = {"CallbackCommand": "OfficialAccount.CallbackAfterSendMsg", "EventTime": "soon"}
    with capture_callbacks(app) as callbacks:
        response = post(app, body)
    assert response.status_code == 200
    assert [c.body for c in callbacks] == [body]


# --- dedup ---------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def any_store_app(request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path) -> Flask:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'd.sqlite3'}"
    return make_app(store=url)


@pytest.mark.parametrize(("body", "signal", "event_type", "own"), CASES, ids=IDS)
def test_a_redelivery_is_dispatched_once_per_receiver(
    any_store_app: Flask,
    recorded: Callable[[Signal, Flask], list[tuple[Flask, Any]]],
    body: dict[str, Any],
    signal: Signal,
    event_type: type,
    own: dict[str, Any],
) -> None:
    app = any_store_app
    seen = recorded(signal, app)
    for _ in range(3):
        assert post(app, body).status_code == 200
    assert len(seen) == 1
    statuses = sorted(d.status for d in store_of(app).deliveries())
    assert statuses == ["done", "duplicate", "duplicate"]


def test_two_events_sharing_a_sign_are_both_dispatched(
    app: Flask, recorded: Callable[[Signal, Flask], list[tuple[Flask, Any]]]
) -> None:
    """Tencent signs with the second only: two callbacks in one second carry the same Sign."""
    seen = recorded(oa.subscribers_added, app)
    body = CASES[4][0]
    query = signed_query(app, command=body["CallbackCommand"])
    bodies = [
        {**body, "SubscribeAccountList": [{"Subscriber_Account": "user7"}]},
        {**body, "SubscribeAccountList": [{"Subscriber_Account": "user8"}]},
        {**body, "EventTime": EVENT_TIME + 1},
    ]
    for sent in bodies:
        response = app.test_client().post(f"/tencent-im/callback?{query}", data=json.dumps(sent))
        assert response.status_code == 200
    assert [e.subscribers for _, e in seen] == [("user7",), ("user8",), ("user1", "user2")]
    assert len({e.dedup_key for _, e in seen}) == 3
    assert [d.status for d in store_of(app).deliveries()] == ["done"] * 3


def test_an_after_send_and_a_recall_of_the_same_msgkey_do_not_collide(
    app: Flask, recorded: Callable[[Signal, Flask], list[tuple[Flask, Any]]]
) -> None:
    sent = recorded(oa.message_sent, app)
    recalled = recorded(oa.messages_recalled, app)
    assert post(app, CASES[0][0]).status_code == 200
    assert post(app, recall_body(["71_1_1698741698"], official_account=ACCOUNT)).status_code == 200
    assert len(sent) == 1
    assert len(recalled) == 1
    assert sent[0][1].dedup_key == "AfterSendMsg:71_1_1698741698"
    assert recalled[0][1].dedup_keys == ("71_1_1698741698",)


def test_the_digest_identity_is_the_canonical_body() -> None:
    body = {"b": [1, {"y": 2, "x": "é"}], "a": 1, "CallbackCommand": "X.CallbackAfterY"}
    reordered = {"CallbackCommand": "X.CallbackAfterY", "a": 1, "b": [1, {"x": "é", "y": 2}]}
    assert (
        canonical_json(body)
        == '{"CallbackCommand":"X.CallbackAfterY","a":1,"b":[1,{"x":"é","y":2}]}'.encode()
    )
    assert digest_identity("X.CallbackAfterY", body) == digest_identity(
        "X.CallbackAfterY", reordered
    )
    key = digest_identity("X.CallbackAfterY", body)
    assert key.startswith("AfterY:")
    assert len(key.partition(":")[2]) == 32
    assert digest_identity("X.CallbackAfterY", {**body, "a": 2}) != key


# --- failures and replay -------------------------------------------------------------------


@pytest.mark.parametrize(("body", "signal", "event_type", "own"), CASES, ids=IDS)
def test_a_failed_typed_receiver_is_kept_and_replayed_alone_through_the_cli(
    any_store_app: Flask,
    body: dict[str, Any],
    signal: Signal,
    event_type: type,
    own: dict[str, Any],
) -> None:
    app = any_store_app
    calls: list[str] = []
    down = {"flaky"}

    def steady(sender: Flask, event: Any, **_: Any) -> None:
        calls.append("steady")

    def flaky(sender: Flask, event: Any, **_: Any) -> None:
        if "flaky" in down:
            raise RuntimeError("index is down")
        assert type(event) is event_type
        calls.append("flaky")

    signal.connect(steady, app, weak=False)
    signal.connect(flaky, app, weak=False)
    try:
        with capture(app) as seen:
            assert post(app, body).status_code == 200
        assert calls == ["steady"]
        kind = KINDS[body["CallbackCommand"]]
        assert [(f.signal_name, f.receiver.rpartition(".")[2]) for f in seen.failures] == [
            (kind.signal_name, "flaky")
        ]
        (delivery,) = store_of(app).deliveries()
        assert delivery.status == "failed"
        assert delivery.last_error is not None
        assert "RuntimeError: index is down" in delivery.last_error

        down.clear()
        result = app.test_cli_runner().invoke(args=["oa-recall", "replay", "--failed"])
        assert result.exit_code == 0, result.output
        assert calls == ["steady", "flaky"]
        assert f"{kind.signal_name}:" in result.output
        assert "flaky ok" in result.output
        assert "steady" not in result.output
        assert [d.status for d in store_of(app).deliveries()] == ["done"]
        # A redelivery after the replay runs nobody again.
        assert post(app, body).status_code == 200
        assert calls == ["steady", "flaky"]
    finally:
        signal.disconnect(steady)
        signal.disconnect(flaky)


def test_a_typed_delivery_kept_without_its_signal_replays_untyped(make_app: AppFactory) -> None:
    """Kept for callback_received alone (no dedup keys): its replay sends no typed event, even
    if a typed receiver was connected since, rather than marking it a duplicate."""
    app = make_app()
    fail = [True]

    def audit(sender: Flask, **_: Any) -> None:
        if fail[0]:
            raise RuntimeError("audit down")

    with callback_received.connected_to(audit, app):
        post(app, CASES[0][0])
        fail[0] = False
        typed: list[Any] = []
        with oa.message_sent.connected_to(lambda sender, event, **kw: typed.append(event), app):
            result = app.test_cli_runner().invoke(args=["oa-recall", "replay", "--failed"])
    assert result.exit_code == 0, result.output
    assert typed == []
    assert [d.status for d in store_of(app).deliveries()] == ["done"]


# --- the testing module and the pytest plugin ----------------------------------------------

BUILDERS = [
    (lambda: after_send_msg_body("5_1_5", text="hi"), oa.MessageSentEvent, {"text": "hi"}),
    (lambda: after_create_body(name="News"), oa.OfficialAccountCreatedEvent, {"name": "News"}),
    (
        lambda: after_info_changed_body(FaceUrl="https://x/y"),
        oa.OfficialAccountChangedEvent,
        {"changed": {"FaceUrl": "https://x/y"}},
    ),
    (
        lambda: after_destroyed_body(owner="o"),
        oa.OfficialAccountDestroyedEvent,
        {"name": "Test channel"},
    ),
    (
        lambda: after_add_subscriber_body(["a", "b"]),
        oa.SubscribersAddedEvent,
        {"subscribers": ("a", "b")},
    ),
    (
        lambda: after_delete_subscriber_body(["a"]),
        oa.SubscribersDeletedEvent,
        {"subscribers": ("a",)},
    ),
    (lambda: after_full_body(), oa.SubscriberLimitReachedEvent, {}),
]


@pytest.mark.parametrize(
    ("build", "event_type", "own"),
    BUILDERS,
    ids=["send", "create", "changed", "destroyed", "add", "delete", "full"],
)
def test_each_builder_makes_a_body_its_event_is_loaded_from(
    app: Flask, build: Callable[[], dict[str, Any]], event_type: type, own: dict[str, Any]
) -> None:
    body = build()
    assert typed_body(body["CallbackCommand"])["CallbackCommand"] == body["CallbackCommand"]
    with capture(app) as seen, capture_events(app, body["CallbackCommand"]) as only:
        assert post(app, body).status_code == 200
    (event,) = seen.of(event_type)
    assert seen.events == only == [event]
    assert seen.recalls == []
    for name, value in own.items():
        assert getattr(event, name) == value


def test_capture_events_without_commands_hears_every_typed_signal(app: Flask) -> None:
    with capture_events(app) as events:
        for command in KINDS:
            post(app, typed_body(command, msg_key="7_1_7"))
    assert [type(e).__name__ for e in events] == [
        "MessageSentEvent",
        "OfficialAccountCreatedEvent",
        "OfficialAccountChangedEvent",
        "OfficialAccountDestroyedEvent",
        "SubscribersAddedEvent",
        "SubscribersDeletedEvent",
        "SubscriberLimitReachedEvent",
    ]
    with pytest.raises(KeyError), capture_events(app, "State.StateChange"):
        pass


def test_the_plugin_fixture_collects_typed_events(
    oa_recall_post: Any, oa_recall_typed_events: list[Any]
) -> None:
    oa_recall_post(after_send_msg_body("8_1_8", text="plugin"))
    assert [e.text for e in oa_recall_typed_events] == ["plugin"]
