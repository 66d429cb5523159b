"""The operator page, in process: refusals, the list and its filters, one delivery, replay with
CSRF protection. In a real browser against gunicorn: ``tests/test_admin_browser.py``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, redirect
from flask.testing import FlaskClient
from werkzeug.wrappers import Request

from flask_oa_recall import callback_received, messages_recalled
from flask_oa_recall.admin import create_admin_blueprint
from flask_oa_recall.testing import after_send_msg_body, post_callback

from .conftest import TOKEN, AppFactory

PREFIX = "/oa-recall-admin"


class Flaky:
    """A receiver that fails until ``healed`` is set."""

    def __init__(self) -> None:
        self.healed = False
        self.seen: list[str] = []

    def __call__(self, sender: Flask, event: Any, **_: Any) -> None:
        if not self.healed:
            raise RuntimeError("mirror is down")
        self.seen.extend(event.msg_keys)


def audit(sender: Flask, **_: Any) -> None:
    """Listens to every callback."""


def allow_header(request: Request) -> bool:
    return request.headers.get("X-Operator") == "yes"


@pytest.fixture
def flaky() -> Flaky:
    return Flaky()


@pytest.fixture
def admin_app(make_app: AppFactory, flaky: Flaky) -> Iterator[Flask]:
    app = make_app()
    app.secret_key = "test-secret"
    app.register_blueprint(create_admin_blueprint(authorize=allow_header), url_prefix=PREFIX)
    messages_recalled.connect(flaky, app, weak=False)
    callback_received.connect(audit, app)  # so that every command is kept
    yield app
    messages_recalled.disconnect(flaky, app)
    callback_received.disconnect(audit, app)


@pytest.fixture
def operator(admin_app: Flask) -> FlaskClient:
    client = admin_app.test_client()
    client.environ_base["HTTP_X_OPERATOR"] = "yes"
    return client


def delivery_ids(html: str) -> list[str]:
    return re.findall(r'class="id"><a href="[^"]+">([0-9a-f]{24})</a>', html)


def kept(app: Flask) -> list[Any]:
    state = app.extensions["oa_recall"]
    return state.store(state.settings(app.config)).deliveries(limit=100)


def test_without_an_authorization_check_every_request_is_refused(make_app: AppFactory) -> None:
    app = make_app()
    app.register_blueprint(create_admin_blueprint(), url_prefix=PREFIX)
    post_callback(app.test_client())
    (delivery,) = kept(app)
    client = app.test_client()
    for method, path in [
        ("GET", "/"),
        ("GET", f"/{delivery.id}"),
        ("POST", f"/{delivery.id}/replay"),
    ]:
        response = client.open(PREFIX + path, method=method)
        assert response.status_code == 403
        assert "The operator page is off" in response.get_data(as_text=True)
        assert delivery.id not in response.get_data(as_text=True)


def test_a_request_the_check_refuses_gets_403(admin_app: Flask) -> None:
    response = admin_app.test_client().get(PREFIX + "/")
    assert response.status_code == 403
    assert "You are not allowed to see this page." in response.get_data(as_text=True)


def test_the_check_can_answer_with_a_redirect_to_a_login_page(make_app: AppFactory) -> None:
    app = make_app()
    app.register_blueprint(
        create_admin_blueprint(authorize=lambda request: redirect("/login")), url_prefix=PREFIX
    )
    response = app.test_client().get(PREFIX + "/")
    assert (response.status_code, response.headers["Location"]) == (302, "/login")


def test_the_list_shows_kept_deliveries_newest_first(
    admin_app: Flask, operator: FlaskClient
) -> None:
    post_callback(operator, msg_keys=["1_1_1"], official_account="@TOA#_news")
    post_callback(operator, body=after_send_msg_body(official_account="@TOA#_sports"))
    response = operator.get(PREFIX + "/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert delivery_ids(html) == [d.id for d in kept(admin_app)]
    assert "2 matching" in html
    assert response.headers["Cache-Control"] == "no-store"


FILTERS = [
    ("status=failed", ["news"]),
    ("status=done", ["sports"]),
    ("command=OfficialAccount.CallbackAfterSendMsg", ["sports"]),
    ("account=news", ["news"]),
    ("account=%40TOA%23_SPORTS", ["sports"]),
    ("since=2000-01-01T00:00&until=2100-01-01", ["sports", "news"]),
    ("until=2000-01-01", []),
    ("status=interrupted", []),
]


@pytest.mark.parametrize(("query", "accounts"), FILTERS, ids=[f[0] for f in FILTERS])
def test_filters(admin_app: Flask, operator: FlaskClient, query: str, accounts: list[str]) -> None:
    post_callback(operator, msg_keys=["1_1_1"], official_account="@TOA#_news")  # fails
    post_callback(operator, body=after_send_msg_body(official_account="@TOA#_sports"))
    sports, news = kept(admin_app)  # newest first
    by_account = {"news": news.id, "sports": sports.id}
    html = operator.get(f"{PREFIX}/?{query}").get_data(as_text=True)
    assert delivery_ids(html) == [by_account[a] for a in accounts]


@pytest.mark.parametrize(
    "query", ["status=lost", "since=yesterday"], ids=["unknown-status", "bad-time"]
)
def test_a_bad_filter_is_a_400_page(operator: FlaskClient, query: str) -> None:
    response = operator.get(f"{PREFIX}/?{query}")
    assert response.status_code == 400
    assert "<h1>Bad Request</h1>" in response.get_data(as_text=True)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, "no replay form"
    return match.group(1)


def test_a_failed_delivery_shows_its_body_query_receivers_and_a_replay_form(
    admin_app: Flask, operator: FlaskClient
) -> None:
    post_callback(operator, msg_keys=["1_1_1"], official_account="@TOA#_news")
    (delivery,) = kept(admin_app)
    html = operator.get(f"{PREFIX}/{delivery.id}").get_data(as_text=True)
    assert 'id="status">failed<' in html
    assert "RuntimeError: mirror is down" in html
    assert "&#34;MsgKey&#34;: &#34;1_1_1&#34;" in html  # pretty-printed, escaped
    assert "\n  &#34;CallbackCommand&#34;" in html
    assert "SdkAppid" in html
    assert "RequestTime" in html
    assert "Sign" not in html.replace("without Sign", "")
    assert TOKEN not in html
    assert "Replay this delivery" in html
    assert "status-failed" in html
    csrf_of(html)


def test_replay_runs_the_failed_receiver_and_shows_the_result(
    admin_app: Flask, operator: FlaskClient, flaky: Flaky
) -> None:
    post_callback(operator, msg_keys=["1_1_1"])
    (delivery,) = kept(admin_app)
    token = csrf_of(operator.get(f"{PREFIX}/{delivery.id}").get_data(as_text=True))
    flaky.healed = True
    response = operator.post(f"{PREFIX}/{delivery.id}/replay", data={"csrf_token": token})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Replayed: now done." in html
    assert "Attempt 2; ran:" in html
    assert 'id="status">done<' in html
    assert "Replay this delivery" not in html
    assert flaky.seen == ["1_1_1"]
    again = operator.post(f"{PREFIX}/{delivery.id}/replay", data={"csrf_token": token})
    assert "Already done: nothing to replay." in again.get_data(as_text=True)


def test_a_replay_that_fails_again_says_so(admin_app: Flask, operator: FlaskClient) -> None:
    post_callback(operator, msg_keys=["1_1_1"])
    (delivery,) = kept(admin_app)
    token = csrf_of(operator.get(f"{PREFIX}/{delivery.id}").get_data(as_text=True))
    html = operator.post(f"{PREFIX}/{delivery.id}/replay", data={"csrf_token": token}).get_data(
        as_text=True
    )
    assert "Replayed: now failed." in html
    assert "mirror is down" in html
    assert 'class="banner bad"' in html


@pytest.mark.parametrize(
    "token", ["", "forged", "other-delivery", "other-session"], ids=lambda t: t or "missing"
)
def test_replay_without_a_valid_csrf_token_is_refused(
    admin_app: Flask, operator: FlaskClient, flaky: Flaky, token: str
) -> None:
    post_callback(operator, msg_keys=["1_1_1"])
    post_callback(operator, msg_keys=["2_1_1"])
    first, second = kept(admin_app)
    if token == "other-delivery":
        token = csrf_of(operator.get(f"{PREFIX}/{second.id}").get_data(as_text=True))
    elif token == "other-session":
        stranger = admin_app.test_client()
        stranger.environ_base["HTTP_X_OPERATOR"] = "yes"
        token = csrf_of(stranger.get(f"{PREFIX}/{first.id}").get_data(as_text=True))
        operator.get(f"{PREFIX}/{first.id}")  # the operator's session has a nonce of its own
    flaky.healed = True
    response = operator.post(f"{PREFIX}/{first.id}/replay", data={"csrf_token": token})
    assert response.status_code == 400
    assert "did not come from this page" in response.get_data(as_text=True)
    assert flaky.seen == []


def test_a_busy_delivery_is_not_replayed(admin_app: Flask, operator: FlaskClient) -> None:
    post_callback(operator, msg_keys=["1_1_1"])
    (delivery,) = kept(admin_app)
    token = csrf_of(operator.get(f"{PREFIX}/{delivery.id}").get_data(as_text=True))
    state = admin_app.extensions["oa_recall"]
    state.store(state.settings(admin_app.config)).resume(delivery.id, 60)  # a live worker
    html = operator.post(f"{PREFIX}/{delivery.id}/replay", data={"csrf_token": token}).get_data(
        as_text=True
    )
    assert "Busy: a live worker is dispatching it right now." in html


def test_unknown_delivery_is_a_404_page(operator: FlaskClient) -> None:
    response = operator.get(f"{PREFIX}/{'0' * 24}")
    assert response.status_code == 404
    assert "No such delivery is kept." in response.get_data(as_text=True)


def test_without_a_secret_key_the_page_says_how_to_replay(
    admin_app: Flask, operator: FlaskClient
) -> None:
    post_callback(operator, msg_keys=["1_1_1"])
    (delivery,) = kept(admin_app)
    admin_app.secret_key = None
    html = operator.get(f"{PREFIX}/{delivery.id}").get_data(as_text=True)
    assert "Set the app's <code>SECRET_KEY</code>" in html
    assert f"flask oa-recall replay {delivery.id}" in html
    response = operator.post(f"{PREFIX}/{delivery.id}/replay", data={"csrf_token": "x"})
    assert response.status_code == 500
    assert "needs the app&#39;s SECRET_KEY" in response.get_data(as_text=True)


def test_interrupted_deliveries_are_listed_and_replayable(
    admin_app: Flask, operator: FlaskClient, flaky: Flaky
) -> None:
    flaky.healed = True
    state = admin_app.extensions["oa_recall"]
    store = state.store(state.settings(admin_app.config))
    from flask_oa_recall.store import NewDelivery

    body = '{"CallbackCommand": "OfficialAccount.CallbackAfterMsgWithDraw",'
    body += ' "Official_Account": "@TOA#_x", "WithdrawMsgList": [{"MsgKey": "5_1_1"}],'
    body += ' "EventTime": 1670574414123}'
    store.begin(
        NewDelivery(
            id="f" * 24,
            received_at=time.time(),
            sdk_app_id=1400000000,
            command="OfficialAccount.CallbackAfterMsgWithDraw",
            query={"SdkAppid": "1400000000"},
            body=body,
            official_account="@TOA#_x",
            msg_keys=("5_1_1",),
        ),
        0.001,
    )
    time.sleep(0.01)
    html = operator.get(f"{PREFIX}/?status=interrupted").get_data(as_text=True)
    assert delivery_ids(html) == ["f" * 24]
    token = csrf_of(operator.get(f"{PREFIX}/{'f' * 24}").get_data(as_text=True))
    html = operator.post(f"{PREFIX}/{'f' * 24}/replay", data={"csrf_token": token}).get_data(
        as_text=True
    )
    assert "Replayed: now done." in html
    assert flaky.seen == ["5_1_1"]
