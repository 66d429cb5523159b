"""OpenTelemetry spans, recorded with the SDK's in-memory exporter: one span per callback, with
children for verify, keep and each receiver, and attributes without secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flask_oa_recall import messages_recalled
from flask_oa_recall.testing import post_callback, recall_body, sign
from flask_oa_recall.tracing import active_tracer

from .conftest import TOKEN, AppFactory


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider for this test only.

    ``trace.set_tracer_provider`` may be called once per process, so the global is swapped
    for the test and put back after it.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def everything_in(spans: tuple[ReadableSpan, ...]) -> str:
    return json.dumps([json.loads(span.to_json()) for span in spans])


def test_no_tracer_provider_means_no_tracer() -> None:
    assert active_tracer() is None


def test_each_receiver_is_a_span_and_a_failure_records_its_exception(
    make_app: AppFactory, exporter: InMemorySpanExporter
) -> None:
    app = make_app()

    def mirror(sender: Flask, **_: Any) -> None:
        pass

    def broken(sender: Flask, **_: Any) -> None:
        raise RuntimeError("mirror down")

    with messages_recalled.connected_to(mirror, app), messages_recalled.connected_to(broken, app):
        assert post_callback(app.test_client(), msg_keys=["1_1_1"]).status_code == 200
    spans = {
        str(dict(s.attributes or {})["oa_recall.receiver"]).rsplit(".", 1)[-1]: s
        for s in by_name(exporter.get_finished_spans())["oa_recall.receiver"]
    }
    assert spans["mirror"].status.status_code == trace.StatusCode.UNSET
    assert spans["broken"].status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in spans["broken"].events] == ["exception"]
    assert "1_1_1" not in everything_in(exporter.get_finished_spans())


def test_an_accepted_recall_is_one_span_with_verify_keep_and_receivers(
    make_app: AppFactory, exporter: InMemorySpanExporter
) -> None:
    app = make_app()

    def mirror(sender: Flask, **_: Any) -> None:
        pass

    with messages_recalled.connected_to(mirror, app):
        assert post_callback(app.test_client(), msg_keys=["1_1_1"]).status_code == 200
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    (root,) = named["oa_recall.callback"]
    assert root.parent is None
    for child in ("oa_recall.verify", "oa_recall.keep", "oa_recall.receiver"):
        (span,) = named[child]
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
    attributes = dict(root.attributes or {})
    assert attributes["oa_recall.command"] == "OfficialAccount.CallbackAfterMsgWithDraw"
    assert attributes["oa_recall.sdk_app_id"] == 1400000000
    assert len(str(attributes["oa_recall.delivery_id"])) == 24
    assert attributes["oa_recall.outcome"] == "done"
    (receiver,) = named["oa_recall.receiver"]
    assert dict(receiver.attributes or {})["oa_recall.receiver"].endswith("mirror")


def test_a_rejection_is_a_span_with_its_reason_and_no_secret(
    make_app: AppFactory, exporter: InMemorySpanExporter
) -> None:
    app = make_app()
    forged = sign("wrong-token", "1700000000")
    body = recall_body(["secret-body-key"])
    app.test_client().post(
        f"/tencent-im/callback?SdkAppid=1400000000&CallbackCommand=x&Sign={forged}"
        "&RequestTime=1700000000",
        data=json.dumps(body),
    )
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    (root,) = named["oa_recall.callback"]
    attributes = dict(root.attributes or {})
    assert attributes["oa_recall.outcome"] == "rejected"
    assert attributes["oa_recall.reason"] == "stale_request"
    assert "oa_recall.keep" not in named
    text = everything_in(spans)
    for secret in (forged, TOKEN, "secret-body-key"):
        assert secret not in text


def test_tracing_can_be_switched_off(make_app: AppFactory, exporter: InMemorySpanExporter) -> None:
    app = make_app(tracing=False)
    post_callback(app.test_client())
    assert exporter.get_finished_spans() == ()


def test_the_tracer_is_reused_while_the_provider_stays(exporter: InMemorySpanExporter) -> None:
    assert active_tracer() is active_tracer() is not None


def test_a_decision_is_a_span_with_its_result(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    from .test_metrics import SEND, moderated_app, send

    app = moderated_app(tmp_path)
    send(app, "forbidden")
    send(app, "crash")
    decisions = [
        dict(s.attributes or {})
        for s in by_name(exporter.get_finished_spans())["oa_recall.decision"]
    ]
    assert decisions == [
        {"oa_recall.command": SEND, "oa_recall.decision": "deny", "oa_recall.fallback": False},
        {
            "oa_recall.command": SEND,
            "oa_recall.decision": "allow",
            "oa_recall.fallback": True,
            "oa_recall.fallback_reason": "RuntimeError",
        },
    ]
