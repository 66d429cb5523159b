"""`flask oa-recall send` (a stand-in for Tencent, over real HTTP) and `flask oa-recall check`."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flask_oa_recall import RecallEvent, create_blueprint, messages_recalled
from flask_oa_recall.cli.check import run_checks
from flask_oa_recall.store import SQLiteStore
from flask_oa_recall.testing import after_send_msg_body
from tests.servers import GunicornServer, gunicorn_server, run_flask

from .conftest import SDK_APP_ID, AppFactory

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/mirror_app.py:create_app"
EXAMPLE_TOKEN = "change-me"
OK_LINE = '{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'
REAL_TOKEN = "0f3c-a-real-looking-token"


def invoke(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["oa-recall", *args])


def lines_of(result: Result) -> list[list[str]]:
    """The report as [level, topic, text] rows."""
    rows = []
    for line in result.output.splitlines():
        parts = line.split(None, 2)
        if parts and parts[0] in ("OK", "WARN", "FAIL"):
            rows.append(parts)
    return rows


def levels(result: Result, topic: str) -> list[str]:
    return [row[0] for row in lines_of(result) if row[1] == topic]


def hide(sender: Flask, event: RecallEvent, **_: Any) -> None:
    """A receiver for the check to find."""


@pytest.fixture
def live_app(make_app: AppFactory, tmp_path: Path) -> Iterator[Flask]:
    """An app configured as it should be for production, with a receiver."""
    app = make_app(tokens=[REAL_TOKEN], store=f"sqlite:///{tmp_path}/deliveries.sqlite3")
    messages_recalled.connect(hide, app)
    yield app
    messages_recalled.disconnect(hide, app)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# check


def test_check_passes_a_production_configuration(live_app: Flask, tmp_path: Path) -> None:
    result = invoke(live_app, "check", "--strict")
    assert result.exit_code == 0, result.output
    rows = lines_of(result)
    assert {row[0] for row in rows} == {"OK"}
    assert [row[1] for row in rows] == [
        "sdkappid",
        "tokens",
        "skew",
        "body-limit",
        "store",
        "layout",
        "receivers",
        "keep",
        "keep",
        "route",
        "dispatch",
    ]
    text = {row[1]: row[2] for row in rows}
    assert text["sdkappid"] == f"OA_RECALL_SDKAPPID = {SDK_APP_ID}"
    assert text["tokens"] == f"1 for SdkAppid {SDK_APP_ID}"
    assert text["store"] == f"sqlite:///{tmp_path}/deliveries.sqlite3 (read and written)"
    version = SQLiteStore.layout_version
    assert text["layout"] == f"version {version} (this flask-oa-recall reads and writes {version})"
    assert text["receivers"] == "messages_recalled: tests.test_cli_send_check.hide"
    assert text["route"].startswith("POST /tencent-im/callback ")
    assert result.output.splitlines()[-1] == "11 ok, 0 warnings, 0 failures"
    assert REAL_TOKEN not in result.output


def test_check_warns_loudly_when_authentication_is_off(make_app: AppFactory) -> None:
    app = make_app(tokens=[])
    result = invoke(app, "check")
    assert result.exit_code == 0
    assert levels(result, "tokens") == ["WARN"]
    assert "AUTHENTICATION IS OFF" in result.output
    assert "(unused while authentication is off)" in result.output
    assert invoke(app, "check", "--strict").exit_code == 1


def test_check_warns_about_no_receivers_a_sample_token_and_the_memory_store(
    make_app: AppFactory,
) -> None:
    result = invoke(make_app(), "check")  # the conftest's app: token "xxxxyyyy", memory://
    assert result.exit_code == 0
    assert levels(result, "tokens") == ["WARN"]
    assert "published sample token" in result.output
    assert levels(result, "store") == ["WARN"]
    assert levels(result, "receivers") == ["WARN"]
    assert "nothing is connected to messages_recalled" in result.output
    assert result.output.splitlines()[-1] == "8 ok, 3 warnings, 0 failures"
    assert "xxxxyyyy" not in result.output


def test_check_reports_a_rotation_and_an_app_without_tokens(make_app: AppFactory) -> None:
    app = make_app(
        sdkappid=[1400000001, 1400000002],
        tokens={1400000001: ["new-token-2", "old-token-1"]},
    )
    rows = [row for row in lines_of(invoke(app, "check")) if row[1] == "tokens"]
    assert rows[0][0] == "OK"
    assert rows[0][2].startswith("2 for SdkAppid 1400000001 (a rotation is in progress")
    assert rows[1] == [
        "WARN",
        "tokens",
        "none for SdkAppid 1400000002: its callbacks are NOT authenticated.",
    ]


@pytest.mark.parametrize(
    ("config", "topic", "level", "phrase"),
    [
        ({"max_skew_seconds": 2}, "skew", "WARN", "keep the server's clock synchronised"),
        ({"max_skew_seconds": 600}, "skew", "WARN", "a captured signed URL stays usable"),
        ({"max_skew_seconds": 60}, "skew", "OK", "OA_RECALL_MAX_SKEW_SECONDS = 60"),
        ({"max_body_bytes": 1024}, "body-limit", "WARN", "may be refused with 413"),
        ({"dispatch": "after_response"}, "dispatch", "OK", "the answer goes out first"),
        ({"dispatch": "sync"}, "dispatch", "OK", "receivers run before the answer"),
    ],
    ids=["skew-tight", "skew-wide", "skew-default", "body-small", "after-response", "sync"],
)
def test_check_judges_each_setting(
    make_app: AppFactory, config: dict[str, Any], topic: str, level: str, phrase: str
) -> None:
    result = invoke(make_app(tokens=[REAL_TOKEN], **config), "check")
    rows = [row for row in lines_of(result) if row[1] == topic]
    assert [row[0] for row in rows] == [level]
    assert phrase in rows[0][2]


def test_check_fails_when_the_store_cannot_be_written(make_app: AppFactory, tmp_path: Path) -> None:
    plain_file = tmp_path / "not-a-folder"
    plain_file.write_text("")
    app = make_app(store=f"sqlite:///{plain_file}/deliveries.sqlite3")
    result = invoke(app, "check")
    assert result.exit_code == 1
    assert levels(result, "store") == ["FAIL"]
    assert "cannot be read and written (StoreError: cannot open SQLite store" in result.output
    assert result.output.splitlines()[-1].endswith(", 1 failure")


def test_check_fails_on_a_config_broken_after_start(make_app: AppFactory) -> None:
    app = make_app()
    app.config["OA_RECALL_DISPATCH"] = "later"
    result = invoke(app, "check")
    assert result.exit_code == 1
    assert lines_of(result) == [
        [
            "FAIL",
            "config",
            "ConfigError: OA_RECALL_DISPATCH must be one of ('sync', 'after_response'),"
            " got 'later'.",
        ]
    ]


def test_check_shows_the_public_url_and_a_host_mounted_route(tmp_path: Path) -> None:
    app = Flask("mounted", instance_path=str(tmp_path))
    app.config.update(
        OA_RECALL_SDKAPPID=SDK_APP_ID,
        OA_RECALL_TOKENS=[REAL_TOKEN],
        OA_RECALL_STORE="memory://",
        SERVER_NAME="chat.example.com",
    )
    app.register_blueprint(create_blueprint(), url_prefix="/hooks/tencent")
    route = [f for f in run_checks(app) if f.topic == "route"]
    assert [(f.level, f.text.split(" (")[0]) for f in route] == [
        ("OK", "POST https://chat.example.com/hooks/tencent")
    ]


def test_check_fails_without_a_callback_route(tmp_path: Path) -> None:
    from flask_oa_recall.state import setup_app

    app = Flask("no_route", instance_path=str(tmp_path))
    app.config.update(OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_STORE="memory://")
    setup_app(app)  # state without the blueprint: nothing serves the callback
    route = [f for f in run_checks(app) if f.topic == "route"]
    assert [(f.level, f.text) for f in route] == [("FAIL", "no URL serves the callback view.")]


# send, without a server


def test_send_without_a_server_says_so_and_fails(make_app: AppFactory) -> None:
    port = free_port()
    result = invoke(make_app(), "send", "--url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"Error: no answer from http://127.0.0.1:{port}: ConnectionRefusedError" in (
        result.output
    )
    assert "Is the server running there?" in result.output
    assert "xxxxyyyy" not in result.output
    assert "Sign=<hidden>" in result.output


def test_send_to_a_server_that_never_answers_gives_up_after_the_timeout(
    make_app: AppFactory,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        result = invoke(make_app(), "send", "--url", f"http://127.0.0.1:{port}", "--timeout", "0.3")
    assert result.exit_code == 1
    assert (
        f"Error: no answer from http://127.0.0.1:{port}: TimeoutError: timed out." in result.output
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ftp://127.0.0.1/x"], "is not an http:// or https:// URL"),
        (["--url", "http://127.0.0.1:1/cb?Sign=x"], "without a query string"),
        (["--msg-key", "1_1_1", "--body", "-"], "cannot go with --body"),
        (["--msg-key", "1_1_1", "--command", "State.StateChange"], "only goes with"),
        (
            ["--text", "x"],
            "--text goes with a before-command or OfficialAccount.CallbackAfterSendMsg",
        ),
        (
            ["--command", "OfficialAccount.CallbackAfterAddSubscriber", "--msg-key", "1_1_1"],
            "--msg-key goes with OfficialAccount.CallbackAfterMsgWithDraw and",
        ),
        (
            [
                "--command",
                "OfficialAccount.CallbackAfterSendMsg",
                "--msg-key",
                "1",
                "--msg-key",
                "2",
            ],
            "carries one MsgKey",
        ),
        (["--text", "x", "--body", "-"], "cannot go with --body"),
    ],
    ids=[
        "not-http",
        "query-given",
        "msg-key-and-body",
        "msg-key-and-other-command",
        "text-and-recall",
        "msg-key-and-typed-command",
        "two-keys-for-a-send",
        "text-and-body",
    ],
)
def test_send_refuses_contradictory_options(
    make_app: AppFactory, args: list[str], message: str
) -> None:
    result = make_app().test_cli_runner().invoke(args=["oa-recall", "send", *args], input=b"{}")
    assert result.exit_code == 2
    assert message in result.output


# send and check against the example app under gunicorn


@pytest.fixture(scope="module")
def example(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GunicornServer, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("send")
    env = {
        "OA_RECALL_STORE": f"sqlite:///{tmp}/deliveries.sqlite3",
        "MIRROR_DATABASE": str(tmp / "mirror.sqlite3"),
    }
    with gunicorn_server(
        "mirror_app:create_app()",
        tmp,
        env=env,
        workers=2,
        extra_args=["--pythonpath", str(ROOT / "examples")],
    ) as server:
        yield server, env


def messages(server: GunicornServer) -> dict[str, Any]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/messages")
        return {row["msg_key"]: row for row in json.loads(conn.getresponse().read())}
    finally:
        conn.close()


@pytest.mark.e2e
def test_send_recalls_a_message_of_the_example_app_under_gunicorn(
    example: tuple[GunicornServer, dict[str, str]],
) -> None:
    server, env = example
    assert messages(server)["72_1_1698741760"]["recalled_at"] is None
    done = run_flask(
        EXAMPLE,
        "oa-recall",
        "send",
        "--url",
        server.base_url,
        "--official-account",
        "@TOA#_news",
        "--msg-key",
        "72_1_1698741760",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith(f"POST {server.base_url}/tencent-im/callback?SdkAppid=1400000000&")
    assert "&Sign=<hidden>&RequestTime=" in out[0]
    assert out[1] == "  recall of 72_1_1698741760 by @TOA#_news"
    assert out[2].startswith("HTTP 200 OK in ")
    assert out[3] == OK_LINE
    assert EXAMPLE_TOKEN not in done.stdout + done.stderr
    assert messages(server)["72_1_1698741760"]["recalled_at"] is not None
    assert messages(server)["73_1_1698741822"]["recalled_at"] is None


@pytest.mark.e2e
def test_send_an_after_send_then_its_recall_as_the_readme_does(
    example: tuple[GunicornServer, dict[str, str]],
) -> None:
    server, env = example
    base = ["oa-recall", "send", "--url", server.base_url, "--official-account", "@TOA#_news"]
    sent = run_flask(
        EXAMPLE,
        *base,
        "--command",
        "OfficialAccount.CallbackAfterSendMsg",
        "--msg-key",
        "91_1_1700000000",
        "--text",
        "Breaking news",
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    lines = sent.stdout.splitlines()
    assert lines[1] == (
        "  OfficialAccount.CallbackAfterSendMsg: message 91_1_1700000000 of @TOA#_news,"
        " text 'Breaking news'"
    )
    assert lines[3] == OK_LINE
    mirrored = messages(server)["91_1_1700000000"]
    assert (mirrored["text"], mirrored["recalled_at"]) == ("Breaking news", None)
    recalled = run_flask(EXAMPLE, *base, "--msg-key", "91_1_1700000000", env=env)
    assert recalled.returncode == 0, recalled.stderr
    assert messages(server)["91_1_1700000000"]["recalled_at"] is not None


@pytest.mark.e2e
def test_send_with_a_wrong_token_prints_the_401_envelope_and_fails(
    example: tuple[GunicornServer, dict[str, str]],
) -> None:
    server, env = example
    refused = run_flask(
        EXAMPLE,
        "oa-recall",
        "send",
        "--url",
        server.base_url,
        "--official-account",
        "@TOA#_news",
        "--msg-key",
        "73_1_1698741822",
        env={**env, "OA_RECALL_SEND_TOKEN": "guessed-token"},
    )
    assert refused.returncode == 1
    out = refused.stdout.splitlines()
    assert out[2].startswith("HTTP 401 UNAUTHORIZED in ")
    assert json.loads(out[3]) == {
        "ActionStatus": "FAIL",
        "ErrorCode": 40102,
        "ErrorInfo": "Sign does not match any configured token.",
    }
    assert refused.stderr.strip() == "Error: the server did not answer with the OK envelope."
    assert "guessed-token" not in refused.stdout + refused.stderr
    assert messages(server)["73_1_1698741822"]["recalled_at"] is None


@pytest.mark.e2e
def test_send_a_body_file_of_another_command(
    example: tuple[GunicornServer, dict[str, str]], make_app: AppFactory, tmp_path: Path
) -> None:
    server, _ = example
    body = tmp_path / "send.json"
    body.write_text(
        json.dumps(
            after_send_msg_body("90_1_1700000000", official_account="@TOA#_news", text="fresh")
        )
    )
    app = make_app(tokens=[EXAMPLE_TOKEN])
    result = invoke(app, "send", "--url", server.base_url, "--body", str(body))
    assert result.exit_code == 0, result.output
    assert "CallbackCommand=OfficialAccount.CallbackAfterSendMsg" in result.output
    assert f"bytes from {body}" in result.output
    assert messages(server)["90_1_1700000000"]["text"] == "fresh"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "status", "error_code"),
    [
        ([], 200, 0),
        (["--unsigned"], 401, 40101),
        (["--sdkappid", "1400000009"], 403, 40302),
        (["--command", "State.StateChange"], 200, 0),
    ],
    ids=["fresh-recall", "unsigned", "other-sdkappid", "other-command"],
)
def test_send_reports_each_answer(
    example: tuple[GunicornServer, dict[str, str]],
    make_app: AppFactory,
    args: list[str],
    status: int,
    error_code: int,
) -> None:
    server, _ = example
    app = make_app(tokens=[EXAMPLE_TOKEN])
    result = invoke(app, "send", "--url", f"{server.base_url}/", *args)
    assert result.exit_code == (0 if status == 200 else 1), result.output
    answer = result.output.splitlines()[3]
    assert result.output.splitlines()[2].startswith(f"HTTP {status} ")
    assert json.loads(answer)["ErrorCode"] == error_code


@pytest.mark.e2e
def test_check_of_the_example_app_as_a_subprocess(
    example: tuple[GunicornServer, dict[str, str]],
) -> None:
    _, env = example
    done = run_flask(EXAMPLE, "oa-recall", "check", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK    receivers   messages_recalled: mirror_app.on_recall" in done.stdout
    assert "published sample token" in done.stdout  # the example's "change-me"
    assert EXAMPLE_TOKEN not in done.stdout


@pytest.mark.e2e
def test_send_a_body_that_is_not_json_prints_the_400_envelope(
    example: tuple[GunicornServer, dict[str, str]], make_app: AppFactory, tmp_path: Path
) -> None:
    server, _ = example
    body = tmp_path / "broken.json"
    body.write_bytes(b"{not json")
    result = invoke(
        make_app(tokens=[EXAMPLE_TOKEN]), "send", "--url", server.base_url, "--body", str(body)
    )
    assert result.exit_code == 1
    assert "CallbackCommand=OfficialAccount.CallbackAfterMsgWithDraw" in result.output
    assert json.loads(result.output.splitlines()[3]) == {
        "ActionStatus": "FAIL",
        "ErrorCode": 40001,
        "ErrorInfo": "The body is not a UTF-8 JSON object.",
    }


def test_check_lists_callback_received_receivers(live_app: Flask) -> None:
    from flask_oa_recall import callback_received

    def audit(sender: Flask, **_: Any) -> None:
        pass

    with callback_received.connected_to(audit, live_app):
        result = invoke(live_app, "check")
    receivers = [row[2] for row in lines_of(result) if row[1] == "receivers"]
    assert receivers == [
        "messages_recalled: tests.test_cli_send_check.hide",
        "callback_received: tests.test_cli_send_check."
        "test_check_lists_callback_received_receivers.<locals>.audit",
    ]
