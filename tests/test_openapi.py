"""The OpenAPI 3.1 description: valid, true to the schemas and the error table, and true to
the running endpoint (responses checked against it, and a bounded schemathesis run against
gunicorn)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from flask_oa_recall import RECALL_COMMAND, REJECTIONS, create_blueprint
from flask_oa_recall.openapi import OPENAPI_VERSION, build_spec
from flask_oa_recall.schemas import RecallBodySchema
from flask_oa_recall.testing import (
    after_add_subscriber_body,
    after_full_body,
    after_send_msg_body,
    callback_body,
    post_callback,
    recall_body,
    sign,
)
from tests.apps.host import SDK_APP_ID as HOST_APP_ID
from tests.apps.host import TOKEN as HOST_TOKEN
from tests.servers import GunicornServer, gunicorn_server, run_flask

from .conftest import SDK_APP_ID, AppFactory

PATH = "/tencent-im/callback"


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for ``schema`` whose ``#/components/...`` references resolve in ``document``."""
    return Draft202012Validator({**schema, "components": document["components"]})


def response_schema(document: dict[str, Any], method: str, status: int) -> dict[str, Any]:
    response = document["paths"][PATH][method]["responses"][str(status)]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def parameters(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in document["paths"][PATH]["post"]["parameters"]}


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"tokens": []},
        {"sdkappid": [1400000001, 1400000002], "tokens": {1400000001: ["a"]}},
        {"path": "/hooks/im", "max_body_bytes": 4096},
    ],
    ids=["default", "no-auth", "two-apps", "custom-path"],
)
def test_the_description_is_valid_openapi_3_1(make_app: AppFactory, config: dict[str, Any]) -> None:
    document = build_spec(make_app(**config))
    validate(document)
    assert document["openapi"] == OPENAPI_VERSION == "3.1.0"
    assert list(document)[:2] == ["openapi", "info"]
    assert list(document["paths"]) == [config.get("path", PATH)]


def test_the_recall_body_comes_from_the_marshmallow_schema(app: Flask) -> None:
    document = build_spec(app)
    schemas = document["components"]["schemas"]
    recall = schemas["RecallBody"]
    marshmallow_fields = RecallBodySchema().fields
    assert set(recall["properties"]) == set(marshmallow_fields)
    assert set(recall["required"]) == {n for n, f in marshmallow_fields.items() if f.required}
    assert recall["additionalProperties"] is True  # unknown fields are kept, never refused
    assert recall["properties"]["CallbackCommand"]["const"] == (
        "OfficialAccount.CallbackAfterMsgWithDraw"
    )
    assert recall["properties"]["WithdrawMsgList"] == {
        "type": "array",
        "minItems": 1,
        "items": {"$ref": "#/components/schemas/WithdrawMsg"},
    }
    assert schemas["WithdrawMsg"]["required"] == ["MsgKey"]
    assert schemas["WithdrawMsg"]["properties"]["MsgKey"] == {"type": "string", "minLength": 1}
    assert [s["type"] for s in recall["properties"]["EventTime"]["oneOf"]] == ["integer", "string"]


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        (recall_body(["1_1_1"]), True),
        (recall_body(["1_1_1"], event_time_ms="1670574414123"), True),
        (recall_body(["1_1_1"], Unknown={"kept": True}), True),
        (callback_body("State.StateChange", Info={}), True),
        ({"EventTime": 1}, True),  # the command may come from the query alone
        (recall_body([]), False),
        ({**recall_body(), "EventTime": "soon"}, False),
        ({**recall_body(), "WithdrawMsgList": [{"MsgKey": ""}]}, False),
        ({k: v for k, v in recall_body().items() if k != "Official_Account"}, False),
        ([1, 2], False),
    ],
    ids=[
        "recall",
        "string-event-time",
        "unknown-field",
        "other-command",
        "no-command-in-body",
        "empty-list",
        "event-time-text",
        "empty-msg-key",
        "no-official-account",
        "not-an-object",
    ],
)
def test_the_request_body_schema_accepts_what_the_endpoint_accepts(
    app: Flask, body: Any, valid: bool
) -> None:
    document = build_spec(app)
    content = document["paths"][PATH]["post"]["requestBody"]["content"]["application/json"]
    assert validator(document, content["schema"]).is_valid(body) is valid
    if isinstance(body, dict) and "CallbackCommand" in body:
        response = post_callback(app.test_client(), app, body)
        assert (response.status_code == 200) is valid, response.json


def test_the_examples_match_their_schema_and_are_accepted(app: Flask) -> None:
    document = build_spec(app)
    content = document["paths"][PATH]["post"]["requestBody"]["content"]["application/json"]
    check = validator(document, content["schema"])
    for name, example in content["examples"].items():
        assert check.is_valid(example["value"]), name
        response = post_callback(app.test_client(), app, example["value"])
        assert response.status_code == 200, name


def test_every_rejection_is_described_with_its_error_code(app: Flask) -> None:
    document = build_spec(app)
    responses = document["components"]["responses"]
    for rejection in REJECTIONS.values():
        described = responses[f"Rejected{rejection.status}"]
        codes = described["content"]["application/json"]["schema"]["properties"]["ErrorCode"]
        assert rejection.error_code in codes["enum"]
        assert {
            "reason": rejection.reason,
            "ErrorCode": rejection.error_code,
            "ErrorInfo": rejection.info,
        } in described["x-oa-recall-reasons"]
        assert f"`{rejection.error_code}` `{rejection.reason}`" in described["description"]
    statuses = {r.status for r in REJECTIONS.values()}
    assert set(responses) == {f"Rejected{s}" for s in statuses}
    post = document["paths"][PATH]["post"]["responses"]
    assert set(post) == {"200", "400", "401", "403", "413", "503"}
    for method in ("get", "put", "patch", "delete"):
        assert document["paths"][PATH][method]["responses"] == {
            "405": {"$ref": "#/components/responses/Rejected405"}
        }
    assert responses["Rejected405"]["headers"]["Allow"]["schema"] == {"const": "POST"}


def test_query_parameters_follow_the_config(make_app: AppFactory) -> None:
    signed = parameters(build_spec(make_app()))
    assert list(signed) == [
        "SdkAppid",
        "CallbackCommand",
        "contenttype",
        "ClientIP",
        "OptPlatform",
        "Sign",
        "RequestTime",
    ]
    assert signed["SdkAppid"]["required"] is True
    assert signed["SdkAppid"]["schema"] == {"type": "integer", "enum": [SDK_APP_ID]}
    assert signed["Sign"]["required"] is True
    assert signed["RequestTime"]["required"] is True
    assert "within 60 s" in signed["RequestTime"]["description"]
    open_ = parameters(build_spec(make_app(tokens=[], max_skew_seconds=30)))
    assert open_["Sign"]["required"] is False
    assert "authentication is off" in open_["Sign"]["description"]
    assert "within 30 s" in open_["RequestTime"]["description"]
    two = parameters(build_spec(make_app(sdkappid=[1400000002, 1400000001])))
    assert two["SdkAppid"]["schema"]["enum"] == [1400000001, 1400000002]


def test_the_path_follows_a_blueprint_mounted_by_the_host(tmp_path: Path) -> None:
    app = Flask("mounted", instance_path=str(tmp_path))
    app.config.update(OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_STORE="memory://")
    app.register_blueprint(create_blueprint(), url_prefix="/api/tencent")
    document = build_spec(app, server_url="https://chat.example.com")
    validate(document)
    assert list(document["paths"]) == ["/api/tencent"]
    assert document["servers"] == [{"url": "https://chat.example.com"}]


def test_the_command_prints_the_description_as_json(app: Flask, tmp_path: Path) -> None:
    runner = app.test_cli_runner()
    printed = runner.invoke(args=["oa-recall", "openapi"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == build_spec(app)
    out = tmp_path / "openapi.json"
    written = runner.invoke(
        args=["oa-recall", "openapi", "--server", "https://chat.example.com", "-o", str(out)]
    )
    assert written.exit_code == 0, written.output
    assert written.output == ""
    assert json.loads(out.read_text())["servers"] == [{"url": "https://chat.example.com"}]


def test_real_responses_conform_to_the_description(app: Flask) -> None:
    document = build_spec(app)
    client = app.test_client()
    now = str(int(time.time()))
    good = f"SdkAppid={SDK_APP_ID}&Sign={sign('xxxxyyyy', now)}&RequestTime={now}"
    cases = [
        ("post", 200, post_callback(client, app)),
        ("post", 400, client.post(f"{PATH}?{good}", data=b"{not json")),
        ("post", 401, post_callback(client, app, token="wrong")),
        ("post", 403, post_callback(client, app, sdk_app_id=1)),
        ("post", 413, client.post(f"{PATH}?{good}", data=b" " * (64 * 1024 + 1))),
        ("get", 405, client.get(PATH)),
        ("delete", 405, client.delete(PATH)),
    ]
    for method, status, response in cases:
        assert response.status_code == status
        assert response.mimetype == "application/json"
        schema = response_schema(document, method, status)
        errors = list(validator(document, schema).iter_errors(response.json))
        assert errors == [], (method, status, response.json)


# A bounded schemathesis run against the real endpoint under gunicorn.


@pytest.fixture(scope="module")
def host_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GunicornServer, dict[str, Any], Path]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    record = tmp / "record.txt"
    env = {
        "OA_TEST_RECORD": str(record),
        "OA_TEST_INSTANCE": str(tmp / "instance"),
        "OA_RECALL_STORE": f"sqlite:///{tmp}/deliveries.sqlite3",
    }
    # The description the app itself prints: what a user would hand to a fuzzer.
    printed = run_flask("tests.apps.host:create_app()", "oa-recall", "openapi", env=env)
    assert printed.returncode == 0, printed.stderr
    with gunicorn_server("tests.apps.host:create_app()", tmp, env=env, workers=2) as server:
        yield server, json.loads(printed.stdout), record


@pytest.mark.e2e
def test_schemathesis_finds_no_5xx_and_only_envelopes_on_the_running_endpoint(
    host_server: tuple[GunicornServer, dict[str, Any], Path],
) -> None:
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    server, document, record = host_server
    validate(document)
    operation = schemathesis.openapi.from_dict(document)[PATH]["POST"]
    cases = st.one_of(
        operation.as_strategy(),
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
    )
    seen: dict[int, int] = {}
    accepted_keys: set[str] = set()
    session = requests.Session()

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    # Three in four requests carry a genuine signature, so that bodies reach the parser, the
    # store and the receivers instead of stopping at 401.
    @given(case=cases, authentic=st.sampled_from([True, True, True, False]))
    def exchange(case: Any, authentic: bool) -> None:
        body = case.body if isinstance(case.body, dict) else None
        if authentic and isinstance(case.query, dict):
            now = str(int(time.time()))
            case.query.update(SdkAppid=HOST_APP_ID, Sign=sign(HOST_TOKEN, now), RequestTime=now)
            command = body.get("CallbackCommand") if body else None
            if isinstance(command, str) and command:
                case.query["CallbackCommand"] = command
        response = case.call_and_validate(
            base_url=server.base_url,
            session=session,
            timeout=10,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
                response_headers_conformance,
            ],
        )
        assert response.status_code < 500
        envelope = response.json()
        assert set(envelope) == {"ActionStatus", "ErrorCode", "ErrorInfo"}
        assert (envelope["ActionStatus"] == "OK") is (response.status_code == 200)
        assert (envelope["ErrorCode"] == 0) is (response.status_code == 200)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        recall = (
            body is not None
            and body.get("CallbackCommand") == RECALL_COMMAND
            and case.query.get("CallbackCommand") in (None, RECALL_COMMAND)
            and isinstance(body.get("WithdrawMsgList"), list)
        )
        if response.status_code == 200 and recall:
            for entry in body["WithdrawMsgList"]:
                key = entry.get("MsgKey") if isinstance(entry, dict) else None
                if isinstance(key, str) and "\n" not in key and "\r" not in key:
                    accepted_keys.add(key)

    try:
        exchange()
    finally:
        session.close()
    print(f"statuses: {dict(sorted(seen.items()))}; accepted MsgKeys: {len(accepted_keys)}")
    assert sum(seen.values()) >= 100
    assert {200, 400, 401} <= set(seen), seen
    # Every recalled message the endpoint accepted reached the app's receiver.
    recorded = {
        line.split(" ", 3)[3]
        for line in record.read_text(encoding="utf-8").split("\n")
        if line.startswith("done mirror ")
    }
    assert accepted_keys, seen
    assert accepted_keys <= recorded
    assert "Traceback" not in server.log()


def test_the_command_on_an_app_without_the_extension_says_so() -> None:
    from flask_oa_recall.cli.openapi import openapi_command

    result = Flask("bare").test_cli_runner().invoke(openapi_command)
    assert result.exit_code == 1
    assert "Error: flask_oa_recall is not set up on this app" in result.output


# Typed Official Account bodies and before-callback answers (issue 9).


def test_every_typed_body_comes_from_its_marshmallow_schema(app: Flask) -> None:
    from flask_oa_recall.kinds import KINDS

    schemas = build_spec(app)["components"]["schemas"]
    for command, kind in KINDS.items():
        name = "RecallBody" if command == RECALL_COMMAND else f"{command[24:]}Body"
        described = schemas[name]
        assert set(described["properties"]) == set(kind.schema.fields), name
        assert set(described["required"]) == {
            n for n, f in kind.schema.fields.items() if f.required
        }
        assert described["properties"]["CallbackCommand"]["const"] == command
        assert described["additionalProperties"] is True
    assert schemas["AfterSendMsgBody"]["required"] == [
        "CallbackCommand",
        "EventTime",
        "MsgKey",
        "Official_Account",
    ]
    assert schemas["OtherCallback"]["properties"]["CallbackCommand"]["not"] == {
        "enum": sorted(KINDS)
    }


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        (after_send_msg_body("9_1_9"), True),
        ({**after_send_msg_body("9_1_9"), "EventTime": "1670574414123"}, True),
        ({k: v for k, v in after_send_msg_body("9_1_9").items() if k != "MsgKey"}, False),
        ({**after_send_msg_body("9_1_9"), "Official_Account": ""}, False),
        ({**after_add_subscriber_body(["u1"]), "EventTime": "soon"}, False),
        (after_add_subscriber_body(["u1"]), True),
        ({k: v for k, v in after_full_body().items() if k != "Official_Account"}, False),
    ],
    ids=[
        "after-send",
        "after-send-string-time",
        "after-send-no-msgkey",
        "after-send-empty-account",
        "add-subscriber-bad-time",
        "add-subscriber",
        "full-no-account",
    ],
)
def test_typed_bodies_are_described_as_a_listening_app_loads_them(
    app: Flask, body: dict[str, Any], valid: bool
) -> None:
    from flask_oa_recall.kinds import KINDS

    document = build_spec(app)
    content = document["paths"][PATH]["post"]["requestBody"]["content"]["application/json"]
    assert validator(document, content["schema"]).is_valid(body) is valid
    with KINDS[body["CallbackCommand"]].signal.connected_to(lambda sender, **kw: None, app):
        response = post_callback(app.test_client(), app, body)
    assert (response.status_code == 200) is valid, response.json


def test_every_typed_command_has_an_accepted_example(app: Flask) -> None:
    from flask_oa_recall.kinds import KINDS

    document = build_spec(app)
    examples = document["paths"][PATH]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    commands = {example["value"]["CallbackCommand"] for example in examples.values()}
    assert set(KINDS) | {"OfficialAccount.CallbackBeforeSendMsg"} <= commands


def test_a_deciders_answer_conforms_to_the_decision_answer(make_app: AppFactory) -> None:
    from flask_oa_recall import Decision, OARecall

    app = Flask("decided")
    app.config.update(OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_STORE="memory://")
    oa = OARecall()
    answers = iter(
        [
            Decision.deny("Blocked.", error_code=120001),
            Decision.allow(
                msg_body=[{"MsgType": "TIMTextElem", "MsgContent": {"Text": "x"}}],
                cloud_custom_data="c",
            ),
            Decision.drop(),
        ]
    )
    oa.decider("OfficialAccount.CallbackBeforeSendMsg")(lambda callback: next(answers))
    oa.init_app(app)
    document = build_spec(app)
    check = validator(document, response_schema(document, "post", 200))
    body = callback_body(
        "OfficialAccount.CallbackBeforeSendMsg", Official_Account="@TOA#_1", MsgBody=[]
    )
    codes = []
    for _ in range(3):
        answer = post_callback(app.test_client(), app, body).json
        assert check.is_valid(answer), answer
        codes.append(answer["ErrorCode"])
    assert codes == [120001, 0, 2]
    assert not check.is_valid({"ActionStatus": "OK", "ErrorCode": 3, "ErrorInfo": ""})
