"""Prometheus metrics, in process: what each counter counts, the store gauge, the exposition.

Metrics are process-wide (prometheus_client's default registry), so each test reads how much a
sample moved. Under gunicorn with several workers: ``tests/test_example_ops.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from flask_oa_recall import RECALL_COMMAND, Decision, OARecall, StoreError, messages_recalled
from flask_oa_recall.metrics import collector_registry, get_metrics, metrics_response
from flask_oa_recall.store import DeliveryStatus, NewDelivery, Outcome
from flask_oa_recall.testing import (
    after_send_msg_body,
    callback_body,
    post_callback,
    signed_query,
)

from .conftest import AppFactory


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Moved:
    """How much samples moved inside a ``with`` block."""

    def __init__(self, *names: tuple[str, dict[str, str]]) -> None:
        self.names = names
        self.before: list[float] = []
        self.delta: list[float] = []

    def __enter__(self) -> Moved:
        self.before = [sample(n, **labels) for n, labels in self.names]
        return self

    def __exit__(self, *exc: object) -> None:
        after = [sample(n, **labels) for n, labels in self.names]
        self.delta = [a - b for a, b in zip(after, self.before, strict=True)]


@pytest.fixture
def metered(make_app: AppFactory) -> Flask:
    return make_app(metrics=True)


def test_metrics_are_off_by_default(make_app: AppFactory) -> None:
    app = make_app()
    assert app.extensions["oa_recall"].metrics is None
    with Moved(("oa_recall_rejections_total", {"reason": "bad_signature"})) as moved:
        post_callback(app.test_client(), token="wrong")
    assert moved.delta == [0]


def test_rejections_are_counted_by_reason(metered: Flask) -> None:
    client = metered.test_client()
    with Moved(
        ("oa_recall_rejections_total", {"reason": "bad_signature"}),
        ("oa_recall_rejections_total", {"reason": "unknown_sdkappid"}),
    ) as moved:
        post_callback(client, token="wrong")
        post_callback(client, token="wrong")
        post_callback(client, sdk_app_id=7)
    assert moved.delta == [2, 1]


def test_receiver_failures_are_counted_by_receiver(metered: Flask) -> None:
    def broken(sender: Flask, **_: Any) -> None:
        raise RuntimeError("down")

    name = f"messages_recalled:{__name__}.{broken.__qualname__}"
    with (
        messages_recalled.connected_to(broken, metered),
        Moved(("oa_recall_receiver_failures_total", {"receiver": name})) as moved,
    ):
        assert post_callback(metered.test_client()).status_code == 200
    assert moved.delta == [1]


def test_store_errors_are_counted(metered: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    state = metered.extensions["oa_recall"]
    store = state.store(state.settings(metered.config))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("gone")

    monkeypatch.setattr(store, "begin", refuse)
    with Moved(("oa_recall_store_errors_total", {})) as moved:
        post_callback(metered.test_client())
    assert moved.delta == [1]


def keep(app: Flask, delivery_id: str, status: str, *, lease: float = 60) -> None:
    """Keep a delivery in ``app``'s store and leave it ``status``."""
    state = app.extensions["oa_recall"]
    store = state.store(state.settings(app.config))
    delivery = NewDelivery(
        id=delivery_id,
        received_at=time.time(),
        sdk_app_id=1400000000,
        command=RECALL_COMMAND,
        query={},
        body=json.dumps({"CallbackCommand": RECALL_COMMAND}),
        official_account="@TOA#_m",
        msg_keys=(delivery_id,),
    )
    claim = store.begin(delivery, lease)
    if status != DeliveryStatus.PENDING:
        store.finish(delivery_id, claim, Outcome(status=status, error="x: boom"))


def waiting(text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(text):
        if family.name == "oa_recall_deliveries_waiting":
            return {s.labels["status"]: s.value for s in family.samples}
    raise AssertionError("no oa_recall_deliveries_waiting in the exposition")


def test_waiting_deliveries_are_read_from_the_store_when_scraped(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(metrics=True, store=f"sqlite:///{tmp_path}/waiting.sqlite3")
    keep(app, "a" * 24, DeliveryStatus.FAILED)
    keep(app, "b" * 24, DeliveryStatus.FAILED)
    keep(app, "c" * 24, DeliveryStatus.PENDING, lease=0.001)  # its worker "died"
    keep(app, "d" * 24, DeliveryStatus.PENDING)  # in flight: not waiting
    keep(app, "e" * 24, DeliveryStatus.DONE)
    time.sleep(0.01)
    with app.app_context():
        response = metrics_response()
    assert response.content_type.startswith("text/plain; version=")
    assert waiting(response.get_data(as_text=True)) == {"failed": 2, "interrupted": 1}


def test_an_unreadable_store_counts_as_a_store_error_at_scrape_time(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(metrics=True)
    state = app.extensions["oa_recall"]
    store = state.store(state.settings(app.config))

    def refuse(**kwargs: Any) -> Any:
        raise StoreError("gone")

    monkeypatch.setattr(store, "deliveries", refuse)
    with Moved(("oa_recall_store_errors_total", {})) as moved:
        collector_registry().collect()
        list(REGISTRY.collect())
    assert moved.delta == [1]


def test_multiprocess_mode_sums_the_files_of_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    from prometheus_client import CollectorRegistry, Counter, values

    # Another "worker" wrote its counter to the shared folder.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 4242))
    worker = Counter("oa_recall_rejections", "", ["reason"], registry=CollectorRegistry())
    worker.labels("bad_signature").inc(3)
    make_app(metrics=True)
    text = metrics_response().get_data(as_text=True)
    assert 'oa_recall_rejections_total{reason="bad_signature"} 3.0' in text
    assert "oa_recall_deliveries_waiting" in text


def test_the_metrics_are_created_once_per_process() -> None:
    assert get_metrics() is get_metrics()


RECALL = {"command": RECALL_COMMAND}


@pytest.mark.parametrize("dispatch", ["sync", "after_response"])
def test_callbacks_are_counted_by_command_and_outcome_with_their_duration(
    make_app: AppFactory, dispatch: str
) -> None:
    app = make_app(metrics=True, dispatch=dispatch)
    client = app.test_client()
    with Moved(
        ("oa_recall_callbacks_total", {**RECALL, "outcome": "done"}),
        ("oa_recall_callbacks_total", {**RECALL, "outcome": "duplicate"}),
        ("oa_recall_dispatch_seconds_count", RECALL),
        ("oa_recall_dispatch_seconds_bucket", {**RECALL, "le": "+Inf"}),
    ) as moved:
        for key in ["1_1_1", "2_1_1", "1_1_1"]:  # the last one, a redelivery
            post_callback(client, msg_keys=[key]).close()  # after_response runs on close
    assert moved.delta == [2, 1, 3, 3]


def test_a_failure_nothing_could_keep_is_counted_not_kept(
    metered: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = metered.extensions["oa_recall"]
    store = state.store(state.settings(metered.config))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("gone")

    def broken(sender: Flask, **_: Any) -> None:
        raise RuntimeError("down")

    monkeypatch.setattr(store, "begin", refuse)
    with (
        messages_recalled.connected_to(broken, metered),
        Moved(("oa_recall_callbacks_total", {**RECALL, "outcome": "not_kept"})) as moved,
    ):
        assert post_callback(metered.test_client()).status_code == 503
    assert moved.delta == [1]


SEND = "OfficialAccount.CallbackBeforeSendMsg"


def moderated_app(tmp_path: Path, **config: Any) -> Flask:
    """An app whose decider allows, denies, drops or raises depending on the text."""
    oa = OARecall()

    @oa.decider(SEND)
    def moderate(callback: Any) -> Decision | None:
        text = json.dumps(callback.body.get("MsgBody"))
        if "forbidden" in text:
            return Decision.deny("Blocked.")
        if "spam" in text:
            return Decision.drop()
        if "crash" in text:
            raise RuntimeError("moderation is down")
        return None

    app = Flask("moderated", instance_path=str(tmp_path))
    app.config.update(
        OA_RECALL_SDKAPPID=1400000000, OA_RECALL_TOKENS=["t"], OA_RECALL_STORE="memory://"
    )
    app.config.update({f"OA_RECALL_{k.upper()}": v for k, v in config.items()})
    oa.init_app(app)
    return app


def send(app: Flask, text: str) -> Any:
    body = callback_body(SEND, MsgBody=[{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}])
    response = app.test_client().post(
        f"/tencent-im/callback?{signed_query(app, command=SEND)}", data=json.dumps(body)
    )
    response.close()
    return response


def test_decisions_are_counted_by_command_and_result(tmp_path: Path) -> None:
    app = moderated_app(tmp_path, metrics=True)
    results = ["allow", "deny", "drop", "fallback"]
    with Moved(
        *(("oa_recall_decisions_total", {"command": SEND, "result": r}) for r in results),
        ("oa_recall_callbacks_total", {"command": SEND, "outcome": "decided"}),
    ) as moved:
        for text in ["hello", "forbidden", "spam", "crash", "hi again"]:
            assert send(app, text).status_code == 200
    assert moved.delta == [2, 1, 1, 1, 5]


def test_a_callback_nobody_listens_to_is_counted_acknowledged(metered: Flask) -> None:
    sent = "OfficialAccount.CallbackAfterSendMsg"
    with Moved(("oa_recall_callbacks_total", {"command": sent, "outcome": "acknowledged"})) as m:
        assert post_callback(metered.test_client(), body=after_send_msg_body()).status_code == 200
    assert m.delta == [1]
