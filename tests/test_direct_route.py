"""The direct route: plain callbacks answered in front of Flask's dispatch, the same way.

Whether a request took it shows in the receivers: through Flask they run inside the view's
request context (``request.endpoint`` is the callback's); on the direct route, in an app context
without one (pytest-flask pushes a request context of its own around each test, with no
endpoint).
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, has_app_context, has_request_context, request, request_started
from flask.testing import FlaskClient
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_oa_recall import (
    Decision,
    OARecall,
    callback_received,
    callback_rejected,
    create_blueprint,
    messages_recalled,
)
from flask_oa_recall.direct import DirectRoute
from flask_oa_recall.testing import (
    BEFORE_SEND_MSG_COMMAND,
    before_send_msg_body,
    post_callback,
    recall_body,
    signed_query,
)

from .apps.host import SDK_APP_ID as HOST_SDK_APP_ID
from .apps.host import TOKEN as HOST_TOKEN
from .conftest import SDK_APP_ID, TOKEN, AppFactory
from .servers import CallbackClient, gunicorn_server

PATH = "/tencent-im/callback"


class Contexts:
    """What the receivers of one app saw: for each signal sent, whether they ran in the view's
    request context (``None``: no app context at all)."""

    def __init__(self, app: Flask) -> None:
        self.seen: list[bool | None] = []
        self._app = app

    def record(self, sender: Flask, **_: Any) -> None:
        assert sender is self._app
        if not has_app_context():
            self.seen.append(None)
            return
        self.seen.append(has_request_context() and request.endpoint is not None)

    def last(self) -> bool | None:
        assert self.seen, "no receiver ran"
        return self.seen[-1]


@pytest.fixture
def contexts(app: Flask) -> Iterator[Contexts]:
    seen = Contexts(app)
    with (
        messages_recalled.connected_to(seen.record, app),
        callback_rejected.connected_to(seen.record, app),
    ):
        yield seen


def test_the_extension_puts_the_direct_route_in_front_of_the_app(app: Flask) -> None:
    assert isinstance(app.wsgi_app, DirectRoute)


def test_a_plain_callback_runs_its_receivers_in_an_app_context_without_a_request_context(
    app: Flask, contexts: Contexts
) -> None:
    response = post_callback(app.test_client(), msg_keys=["d1"])
    assert response.status_code == 200
    assert json.loads(response.data)["ActionStatus"] == "OK"
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Content-Length"] == str(len(response.data))
    assert contexts.last() is False


def test_a_rejected_plain_callback_is_refused_on_the_direct_route(
    app: Flask, contexts: Contexts
) -> None:
    response = post_callback(app.test_client(), token="wrong")
    assert response.status_code == 401
    assert json.loads(response.data)["ErrorCode"] == 40102
    assert contexts.last() is False


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(lambda app: app.before_request(lambda: None), id="app-before_request"),
        pytest.param(lambda app: app.after_request(lambda r: r), id="app-after_request"),
        pytest.param(lambda app: app.teardown_request(lambda e: None), id="app-teardown"),
        pytest.param(
            lambda app: app.url_value_preprocessor(lambda e, v: None), id="url_value_preprocessor"
        ),
        pytest.param(
            lambda app: app.before_request_funcs.setdefault("oa_recall", []).append(lambda: None),
            id="blueprint-before_request",
        ),
    ],
)
def test_a_request_hook_on_the_app_sends_callbacks_through_flask_and_it_runs(
    app: Flask, contexts: Contexts, hook: Callable[[Flask], Any]
) -> None:
    hook(app)
    response = post_callback(app.test_client(), msg_keys=["h1"])
    assert response.status_code == 200
    assert contexts.last() is True


def test_a_hook_of_another_blueprint_keeps_the_direct_route(app: Flask, contexts: Contexts) -> None:
    app.before_request_funcs.setdefault("admin", []).append(lambda: None)
    post_callback(app.test_client(), msg_keys=["o1"])
    assert contexts.last() is False


def test_a_before_request_hook_can_still_refuse_the_callback(app: Flask) -> None:
    @app.before_request
    def closed() -> tuple[str, int]:
        return "maintenance", 503

    response = post_callback(app.test_client())
    assert response.status_code == 503
    assert response.data == b"maintenance"


def test_a_receiver_of_flask_request_signals_sends_callbacks_through_flask(
    app: Flask, contexts: Contexts
) -> None:
    started: list[str] = []

    def on_started(sender: Flask, **_: Any) -> None:
        started.append("started")

    with request_started.connected_to(on_started, app):
        post_callback(app.test_client(), msg_keys=["s1"])
    assert started == ["started"]
    assert contexts.last() is True


def test_oa_recall_direct_false_sends_every_callback_through_flask(
    make_app: AppFactory,
) -> None:
    app = make_app(direct=False)
    seen = Contexts(app)
    with messages_recalled.connected_to(seen.record, app):
        assert post_callback(app.test_client(), msg_keys=["f1"]).status_code == 200
    assert seen.last() is True


def test_a_query_with_escapes_goes_through_flask_and_is_read_the_same(
    app: Flask, contexts: Contexts
) -> None:
    query = signed_query(app, client_ip="10.0.0.1/8")
    assert "%2F" in query
    events: list[Any] = []
    with messages_recalled.connected_to(lambda s, event, **_: events.append(event), app):
        body = json.dumps(recall_body(["q1"])).encode()
        response = app.test_client().post(f"{PATH}?{query}", data=body)
    assert response.status_code == 200
    assert contexts.last() is True
    assert events[0].client_ip == "10.0.0.1/8"


class ExactInput(io.RawIOBase):
    """A server's raw input: ``data``, then a read past it fails (a real socket would wait)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._data:
            raise RuntimeError("read past the Content-Length")
        size = len(self._data) if size < 0 else size
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"", 40001), (b"[]", 40001), (json.dumps(recall_body(["r1"])).encode(), 0)],
    ids=["empty", "short", "recall"],
)
def test_the_direct_route_never_reads_past_the_content_length(
    app: Flask, contexts: Contexts, body: bytes, code: int
) -> None:
    response = app.test_client().post(
        f"{PATH}?{signed_query(app)}",
        data=body,
        environ_overrides={"wsgi.input": ExactInput(body), "CONTENT_LENGTH": str(len(body))},
    )
    assert json.loads(response.data)["ErrorCode"] == code
    assert contexts.last() is False


def test_a_chunked_body_goes_through_flask(app: Flask, contexts: Contexts) -> None:
    body = json.dumps(recall_body(["c1"])).encode()
    response = app.test_client().post(
        f"{PATH}?{signed_query(app)}",
        data=body,
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 200
    assert contexts.last() is True


def test_a_body_over_the_hosts_max_content_length_gets_the_413_envelope_from_flask(
    app: Flask, contexts: Contexts
) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 20
    response = post_callback(app.test_client())
    assert response.status_code == 413
    assert json.loads(response.data)["ErrorCode"] == 41301
    assert contexts.last() is True


def test_a_test_client_that_keeps_the_context_goes_through_flask(app: Flask) -> None:
    client = app.test_client()
    with client:
        post_callback(client, msg_keys=["k1"])
        assert has_request_context()


def test_other_methods_and_paths_go_to_flask(app: Flask) -> None:
    client = app.test_client()
    assert client.get(PATH).status_code == 405
    assert client.post(PATH + "/below").status_code == 404
    assert client.get("/elsewhere").status_code == 404


def _pair(make_app: AppFactory, **config: Any) -> tuple[Flask, Flask]:
    direct = make_app(**config)
    through_flask = make_app(direct=False, **config)
    return direct, through_flask


def _answer(client: FlaskClient, query: str, data: bytes) -> tuple[int, Any, str | None, str]:
    response = client.post(f"{PATH}?{query}", data=data, content_type="application/json")
    return (
        response.status_code,
        json.loads(response.data),
        response.headers.get("Allow"),
        response.headers["Content-Type"],
    )


CASES: dict[str, Callable[[Flask], tuple[str, bytes]]] = {
    "ok": lambda app: (signed_query(app), json.dumps(recall_body(["e1"])).encode()),
    "duplicate": lambda app: (signed_query(app), json.dumps(recall_body(["e1"])).encode()),
    "bad-sign": lambda app: (signed_query(app, token="wrong"), b"{}"),
    "unknown-sdkappid": lambda app: (signed_query(app, sdk_app_id=7), b"{}"),
    "stale": lambda app: (signed_query(app, request_time=1), b"{}"),
    "ambiguous": lambda app: (signed_query(app) + "&SdkAppid=7", b"{}"),
    "not-json": lambda app: (signed_query(app), b"{not json"),
    "not-an-object": lambda app: (signed_query(app), b"[]"),
    "schema": lambda app: (
        signed_query(app),
        json.dumps({**recall_body(["x"]), "WithdrawMsgList": []}).encode(),
    ),
    "too-large": lambda app: (signed_query(app), b" " * 70_000 + b"{}"),
    "other-command": lambda app: (
        signed_query(app, command="C2C.CallbackAfterSendMsg"),
        b'{"CallbackCommand": "C2C.CallbackAfterSendMsg"}',
    ),
    "before-denied": lambda app: (
        signed_query(app, command=BEFORE_SEND_MSG_COMMAND),
        json.dumps(before_send_msg_body("a forbidden word")).encode(),
    ),
}


def test_every_answer_is_the_same_on_the_direct_route_and_through_flask(
    make_app: AppFactory,
) -> None:
    direct, through_flask = _pair(make_app)
    for app in (direct, through_flask):
        oa = OARecall()

        @oa.decider(BEFORE_SEND_MSG_COMMAND)
        def moderate(callback: Any) -> Decision | None:
            return Decision.deny("no") if "forbidden" in json.dumps(callback.body) else None

        app.extensions["oa_recall"].deciders = oa._deciders
    seen = {app: Contexts(app) for app in (direct, through_flask)}
    for app, contexts in seen.items():
        callback_received.connect(contexts.record, app, weak=False)
        callback_rejected.connect(contexts.record, app, weak=False)
    try:
        for name, case in CASES.items():
            answers = []
            for app in (direct, through_flask):
                query, data = case(app)
                answers.append(_answer(app.test_client(), query, data))
            assert answers[0] == answers[1], name
            assert seen[direct].last() is False, name
            assert seen[through_flask].last() is True, name
    finally:
        for app, contexts in seen.items():
            callback_received.disconnect(contexts.record, app)
            callback_rejected.disconnect(contexts.record, app)


def test_a_blueprint_mounted_by_the_host_is_served_directly_at_its_prefix(
    tmp_path: Any,
) -> None:
    app = Flask("host_app", instance_path=str(tmp_path))
    app.config.update(
        TESTING=True,
        OA_RECALL_SDKAPPID=SDK_APP_ID,
        OA_RECALL_TOKENS=[TOKEN],
        OA_RECALL_STORE="memory://",
    )
    app.register_blueprint(create_blueprint("hooks"), url_prefix="/hooks/tencent")
    seen = Contexts(app)
    with messages_recalled.connected_to(seen.record, app):
        response = post_callback(app.test_client(), msg_keys=["b1"], path="/hooks/tencent")
        assert response.status_code == 200
        assert seen.last() is False
        # A hook on that blueprint (by its name) applies to it: through Flask.
        app.before_request_funcs.setdefault("hooks", []).append(lambda: None)
        post_callback(app.test_client(), msg_keys=["b2"], path="/hooks/tencent")
        assert seen.last() is True


def test_a_middleware_the_host_adds_later_still_reaches_the_direct_route(
    app: Flask, contexts: Contexts
) -> None:
    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    assert post_callback(app.test_client(), msg_keys=["p1"]).status_code == 200
    assert contexts.last() is False


def test_receivers_share_g_with_the_app_context_the_direct_route_pushed(app: Flask) -> None:
    values: list[Any] = []

    def first(sender: Flask, **_: Any) -> None:
        g.mark = "set by a callback_received receiver"

    def second(sender: Flask, **_: Any) -> None:
        values.append(g.get("mark"))

    with callback_received.connected_to(first, app), messages_recalled.connected_to(second, app):
        post_callback(app.test_client(), msg_keys=["g1"])
    assert values == ["set by a callback_received receiver"]


def test_an_unexpected_error_propagates_under_testing(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_oa_recall import blueprint

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(blueprint, "plan", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        post_callback(app.test_client())


def test_an_unexpected_error_is_logged_and_answered_500_in_production(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_oa_recall import blueprint

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(blueprint, "plan", broken)
    app.config["TESTING"] = False
    with caplog.at_level(logging.ERROR, logger="flask_oa_recall.direct"):
        response = post_callback(app.test_client())
    assert response.status_code == 500
    assert any("direct callback route failed" in r.getMessage() for r in caplog.records)
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


def test_the_direct_route_does_not_keep_its_app_alive(make_app: AppFactory) -> None:
    app = make_app()
    post_callback(app.test_client(), msg_keys=["w1"])
    gone = weakref.ref(app)
    gc.disable()  # only reference counting: a cycle through the middleware would keep it
    try:
        del app
        assert gone() is None
    finally:
        gc.enable()


@pytest.mark.parametrize(("direct", "route"), [("true", "direct"), ("false", "flask")])
def test_under_gunicorn_a_callback_takes_the_route_the_config_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: str, route: str
) -> None:
    for name in list(os.environ):
        if name.startswith(("OA_RECALL_", "OA_TEST_")):
            monkeypatch.delenv(name)
    record = tmp_path / "record.txt"
    env = {
        "OA_TEST_RECORD": str(record),
        "OA_TEST_INSTANCE": str(tmp_path / "instance"),
        "OA_TEST_RECORD_ROUTE": "1",
        "OA_RECALL_DIRECT": direct,
    }
    with gunicorn_server("tests.apps.host:create_app()", tmp_path, env=env, workers=1) as server:
        for token, status in ((HOST_TOKEN, 200), ("wrong", 401)):
            with CallbackClient(server.base_url, sdk_app_id=HOST_SDK_APP_ID, token=token) as c:
                assert c.recall(["71_1_1698741698"])[0] == status
    lines = record.read_text().splitlines()
    assert [line.split()[-1] for line in lines if line.startswith("route ")] == [route]
    assert sum(line.startswith("done mirror ") for line in lines) == 1
