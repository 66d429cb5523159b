"""Dispatch modes and the rules around a dispatch: after-response, slow warnings, replay."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import RecallEvent, messages_recalled
from flask_oa_recall.delivery import prepare_replay, run
from flask_oa_recall.errors import StoreError
from flask_oa_recall.state import get_state
from flask_oa_recall.store import Claim, MemoryStore, Outcome, Store
from flask_oa_recall.testing import capture_recalls, recall_body, signed_query

from .conftest import AppFactory


def store_of(app: Flask) -> Store:
    state = get_state(app)
    return state.store(state.settings(app.config))


def post(app: Flask, keys: list[str] | None = None) -> Any:
    body = json.dumps(recall_body(keys or ["71_1_1698741698"]))
    return app.test_client().post(f"/tencent-im/callback?{signed_query(app)}", data=body)


def test_after_response_answers_first_then_dispatches(make_app: AppFactory) -> None:
    app = make_app(dispatch="after_response")
    with capture_recalls(app) as events:
        response = post(app)
        assert response.status_code == 200
        assert events == []
        assert [d.status for d in store_of(app).deliveries()] == ["pending"]
        response.close()
    assert [e.msg_keys for e in events] == [("71_1_1698741698",)]
    assert [d.status for d in store_of(app).deliveries()] == ["done"]


def test_after_response_failure_is_kept_for_replay(make_app: AppFactory) -> None:
    app = make_app(dispatch="after_response")

    def broken(sender: Flask, event: RecallEvent, **kw: Any) -> None:
        raise RuntimeError("down")

    with messages_recalled.connected_to(broken, app):
        post(app).close()
    (delivery,) = store_of(app).deliveries()
    assert delivery.status == "failed"
    assert delivery.last_error is not None
    assert "RuntimeError: down" in delivery.last_error


def test_slow_dispatch_logs_a_warning(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(slow_dispatch_share=0)
    post(app)
    assert any("of Tencent's 2 s budget" in r.getMessage() for r in caplog.records)


def test_replay_runs_only_the_receiver_that_failed(make_app: AppFactory) -> None:
    app = make_app()
    calls: list[str] = []
    fail = [True]

    def steady(sender: Flask, event: RecallEvent, **kw: Any) -> None:
        calls.append("steady")

    def flaky(sender: Flask, event: RecallEvent, **kw: Any) -> None:
        calls.append("flaky")
        if fail[0]:
            raise RuntimeError("first try fails")

    with (
        messages_recalled.connected_to(steady, app),
        messages_recalled.connected_to(flaky, app),
    ):
        assert post(app).status_code == 200
        (delivery,) = store_of(app).deliveries()
        assert delivery.status == "failed"
        fail[0] = False
        with app.app_context():
            outcome = run(app, store_of(app), prepare_replay(store_of(app), delivery.id, 60), 1.0)
        assert outcome.status == "done"
        # A redelivery after success dispatches nothing.
        assert post(app).status_code == 200
    assert calls == ["steady", "flaky", "flaky"]
    kept = store_of(app).get(delivery.id)
    assert kept is not None
    assert kept.attempts == 2
    assert set(kept.receivers.values()) == {"ok"}


def test_redelivery_after_a_failure_dispatches_the_failed_receiver_again(
    make_app: AppFactory,
) -> None:
    app = make_app()
    calls: list[str] = []
    fail = [True]

    def flaky(sender: Flask, event: RecallEvent, **kw: Any) -> None:
        calls.append("flaky")
        if fail[0]:
            raise RuntimeError("first try fails")

    with messages_recalled.connected_to(flaky, app):
        post(app)
        fail[0] = False
        post(app)
        post(app)
    assert calls == ["flaky", "flaky"]


class _FinishFails(MemoryStore):
    """A memory store whose ``finish`` fails, as a store would whose disk or server went away
    between the start and the end of a dispatch."""

    def finish(self, delivery_id: str, claim: Claim, outcome: Outcome) -> None:
        raise StoreError("store went away")


def test_store_failing_at_finish_leaves_the_delivery_pending(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    state = get_state(app)
    store = _FinishFails()
    state._stores[state.settings(app.config).store_url] = store
    with capture_recalls(app) as events:
        response = post(app)
    assert response.status_code == 200
    assert len(events) == 1
    assert [d.status for d in store.deliveries()] == ["pending"]
    assert any(r.levelname == "ERROR" and "stays pending" in r.getMessage() for r in caplog.records)


def _handler(target: str, calls: list[str], broken: set[str], sender: Flask, **kw: Any) -> None:
    calls.append(target)
    if target in broken:
        raise RuntimeError(f"{target} is down")


def _replay(app: Flask) -> str:
    (delivery,) = store_of(app).deliveries()
    with app.app_context():
        return run(app, store_of(app), prepare_replay(store_of(app), delivery.id, 60), 1.0).status


def test_receivers_with_the_same_name_are_told_apart(make_app: AppFactory) -> None:
    app = make_app()
    calls: list[str] = []
    broken = {"search"}
    mirror = partial(_handler, "mirror", calls, broken)
    search = partial(_handler, "search", calls, broken)
    with messages_recalled.connected_to(mirror, app), messages_recalled.connected_to(search, app):
        post(app)
        (delivery,) = store_of(app).deliveries()
        assert sorted(delivery.receivers) == [
            "messages_recalled:functools.partial",
            "messages_recalled:functools.partial#2",
        ]
        broken.clear()
        assert _replay(app) == "done"
    assert calls == ["mirror", "search", "search"]


def test_replay_without_the_failed_receiver_connected_finishes_nothing(
    make_app: AppFactory,
) -> None:
    app = make_app()
    calls: list[str] = []

    def steady(sender: Flask, **kw: Any) -> None:
        calls.append("steady")

    def flaky(sender: Flask, **kw: Any) -> None:
        calls.append("flaky")
        if len(calls) < 3:
            raise RuntimeError("down")

    with messages_recalled.connected_to(steady, app):
        with messages_recalled.connected_to(flaky, app):
            post(app)
        # A process whose app factory does not connect ``flaky`` replays it.
        assert _replay(app) == "failed"
        assert calls == ["steady", "flaky"]
        with messages_recalled.connected_to(flaky, app):
            assert _replay(app) == "done"
    assert calls == ["steady", "flaky", "flaky"]
