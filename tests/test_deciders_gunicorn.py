"""The decision budget under real gunicorn sync workers, over real HTTP on 127.0.0.1.

A sync worker handles one request at a time, so only a decider run in a thread of its own can
be cut off at ``OA_RECALL_DECISION_SECONDS``. The deciders of ``tests.apps.deciders`` raise,
sleep past the budget or never return; each answer is timed by the test against Tencent's 2 s
(a generous bound: the budget is 1.5 s), which is the correctness property, not a speed claim.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_oa_recall.testing import callback_body
from tests.apps.host import SDK_APP_ID, TOKEN
from tests.servers import CallbackClient, GunicornServer, gunicorn_server, run_flask, wait_for

pytestmark = pytest.mark.e2e

APP = "tests.apps.deciders:create_app()"
SEND = "OfficialAccount.CallbackBeforeSendMsg"
TENCENT_WAITS = 2.0
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("OA_RECALL_", "OA_TEST_")):
            monkeypatch.delenv(name)
    return {
        "OA_TEST_RECORD": str(tmp_path / "record.txt"),
        "OA_TEST_INSTANCE": str(tmp_path / "instance"),
    }


def record(env: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(what, who, key)`` per line of the app's record."""
    path = Path(env["OA_TEST_RECORD"])
    if not path.exists():
        return []
    lines = (line.split(" ", 3) for line in path.read_text().splitlines())
    return [(what, who, key) for what, who, _pid, key in lines]


def timed_post(client: CallbackClient, text: str) -> tuple[float, int, dict[str, Any]]:
    """POST a before-send of ``text``; return the seconds it took, the status and the answer."""
    body = callback_body(
        SEND,
        Official_Account="@TOA#_news",
        OnlineOnlyFlag=0,
        MsgBody=[{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}],
        CloudCustomData="",
    )
    started = time.perf_counter()
    status, answer = client.post(body)
    return time.perf_counter() - started, status, answer


@pytest.fixture
def server(
    request: pytest.FixtureRequest, env: dict[str, str], tmp_path: Path
) -> Iterator[GunicornServer]:
    fallback = request.param
    env["OA_RECALL_DECISION_FALLBACK"] = fallback
    with gunicorn_server(APP, tmp_path, env=env, workers=1, worker_class="sync") as running:
        yield running


@pytest.mark.parametrize("server", ["allow", "deny"], indirect=True)
def test_raising_and_slow_deciders_get_the_fallback_inside_the_budget(
    server: GunicornServer, env: dict[str, str]
) -> None:
    fallback = env["OA_RECALL_DECISION_FALLBACK"]
    expected_code = 0 if fallback == "allow" else 1
    with CallbackClient(server.base_url, sdk_app_id=SDK_APP_ID, token=TOKEN) as client:
        seconds, status, answer = timed_post(client, "fine")
        assert (status, answer) == (200, OK)

        seconds, status, answer = timed_post(client, "forbidden word")
        assert (status, answer) == (
            200,
            {"ActionStatus": "OK", "ErrorCode": 1, "ErrorInfo": "Blocked by moderation."},
        )

        seconds, status, answer = timed_post(client, "raise")
        assert seconds < TENCENT_WAITS
        assert (status, answer["ActionStatus"], answer["ErrorCode"]) == (200, "OK", expected_code)
        if fallback == "deny":
            assert "failed (RuntimeError)" in answer["ErrorInfo"]

        seconds, status, answer = timed_post(client, "sleep 3")
        assert seconds < TENCENT_WAITS, f"answered after {seconds:.3f} s"
        assert (status, answer["ActionStatus"], answer["ErrorCode"]) == (200, "OK", expected_code)
        if fallback == "deny":
            assert "did not answer within 1.5 s" in answer["ErrorInfo"]

    # The late result arrives about 1.5 s after the answer: logged and discarded.
    wait_for(
        lambda: "returned deny (ErrorCode 1) after the budget" in server.log(),
        timeout=10,
        what="the late decision to be logged",
    )
    assert "discarded (the fallback was answered)" in server.log()
    seen = record(env)
    assert ("late", "decider", "sleep 3") in seen
    assert [(what, who) for what, who, _ in seen if what == "failed"] == [
        ("failed", "RuntimeError"),
        ("failed", "DecisionTimeout"),
    ]
    assert [key for what, _, key in seen if what == "decided"] == [
        "fine",
        "forbidden word",
        "raise",
        "sleep 3",
    ]


def test_a_decider_that_never_returns_fills_a_bounded_pool_then_is_skipped(
    env: dict[str, str], tmp_path: Path
) -> None:
    env.update(
        OA_RECALL_DECISION_THREADS="2",
        OA_RECALL_DECISION_SECONDS="0.5",
        OA_RECALL_DECISION_FALLBACK="deny",
    )
    with (
        gunicorn_server(APP, tmp_path, env=env, workers=1, worker_class="sync") as server,
        CallbackClient(server.base_url, sdk_app_id=SDK_APP_ID, token=TOKEN) as client,
    ):
        answers = [timed_post(client, "hang") for _ in range(4)]
        answers.append(timed_post(client, "fine"))
        worker_log = server.log()
    assert all(seconds < TENCENT_WAITS for seconds, _, _ in answers), answers
    assert [(status, answer["ErrorCode"]) for _, status, answer in answers] == [(200, 1)] * 5
    infos = [answer["ErrorInfo"] for _, _, answer in answers]
    assert ["did not answer within 0.5 s" in info for info in infos] == [True, True] + [False] * 3
    assert ["every decider thread is busy" in info for info in infos] == [False, False] + [True] * 3
    # Only two threads were ever started: the decider ran twice, the rest were not run.
    assert [key for what, _, key in record(env) if what == "decided"] == ["hang", "hang"]
    assert worker_log.count("no free decider thread") == 3
    failed = [who for what, who, _ in record(env) if what == "failed"]
    assert failed == ["DecisionTimeout"] * 2 + ["DecidersBusy"] * 3
    # The stuck threads are daemons: the worker still stopped on SIGTERM, without a kill.
    assert server.process.returncode == 0


def test_a_bad_sign_never_reaches_the_decider(env: dict[str, str], tmp_path: Path) -> None:
    with (
        gunicorn_server(APP, tmp_path, env=env, workers=1) as server,
        CallbackClient(server.base_url, sdk_app_id=SDK_APP_ID, token="not-the-token") as forger,
        CallbackClient(server.base_url, sdk_app_id=1400000999, token=TOKEN) as stranger,
    ):
        _, status, answer = timed_post(forger, "forbidden by forger")
        assert (status, answer["ActionStatus"], answer["ErrorCode"]) == (401, "FAIL", 40102)
        _, status, answer = timed_post(stranger, "forbidden by stranger")
        assert (status, answer["ActionStatus"], answer["ErrorCode"]) == (403, "FAIL", 40302)
    assert record(env) == []


# flask oa-recall send --command <before-command>, against the same kind of server


@pytest.fixture(scope="module")
def decider_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    tmp = tmp_path_factory.mktemp("send")
    env = {"OA_TEST_RECORD": str(tmp / "record.txt"), "OA_TEST_INSTANCE": str(tmp / "instance")}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OA_RECALL_", "OA_TEST_"))}
    with gunicorn_server(APP, tmp, env={**clean, **env}, workers=1) as running:
        yield running


@pytest.mark.parametrize(
    ("args", "printed"),
    [
        (
            ["--command", SEND, "--text", "forbidden word"],
            ["decision: deny", "  ErrorCode: 1", '  ErrorInfo: "Blocked by moderation."'],
        ),
        (
            ["--command", SEND, "--text", "rewrite"],
            [
                "decision: allow",
                "  ErrorCode: 0",
                '  ErrorInfo: ""',
                '  MsgBody: [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "rewritten"}}]',
                '  CloudCustomData: "{\\"moderated\\":true}"',
            ],
        ),
        (
            ["--command", SEND, "--text", "drop"],
            ["decision: drop", "  ErrorCode: 2", '  ErrorInfo: ""'],
        ),
        (
            [
                "--command",
                "OfficialAccount.CallbackBeforeAddSubscriber",
                "--subscriber",
                "user1",
                "--subscriber",
                "bot7",
            ],
            [
                "decision: allow",
                "  ErrorCode: 0",
                '  ErrorInfo: ""',
                '  RefusedSubscribers_Account: ["bot7"]',
            ],
        ),
        (
            ["--command", "C2C.CallbackBeforeSendMsg", "--text", "forbidden"],
            ["decision: allow", "  ErrorCode: 0", '  ErrorInfo: ""'],
        ),
    ],
    ids=["deny", "allow-rewrite", "drop", "refuse-subscribers", "no-decider"],
)
def test_send_prints_the_decision_fields(
    decider_server: GunicornServer, args: list[str], printed: list[str]
) -> None:
    env = {k: v for k, v in decider_server.env.items() if k.startswith("OA_TEST_")}
    done = run_flask(APP, "oa-recall", "send", "--url", decider_server.base_url, *args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-len(printed) :] == printed
    assert "HTTP 200 OK" in done.stdout
    assert TOKEN not in done.stdout


@pytest.mark.parametrize(
    ("args", "what", "printed"),
    [
        (
            ["--command", SEND, "--text", "forbidden 字"],
            f'  {SEND}, text "forbidden 字"',
            ["decision: deny", "  ErrorCode: 1", '  ErrorInfo: "Blocked by moderation."'],
        ),
        (
            [
                "--command",
                "OfficialAccount.CallbackBeforeAddSubscriber",
                "--subscriber",
                "bot1",
                "--official-account",
                "@TOA#_news",
            ],
            "  OfficialAccount.CallbackBeforeAddSubscriber, subscribers bot1 to @TOA#_news",
            [
                "decision: allow",
                "  ErrorCode: 0",
                '  ErrorInfo: ""',
                '  RefusedSubscribers_Account: ["bot1"]',
            ],
        ),
        (
            ["--command", "OfficialAccount.CallbackBeforeCreateOfficialAccount", "--text", "news"],
            '  OfficialAccount.CallbackBeforeCreateOfficialAccount, name "news"',
            ["decision: allow", "  ErrorCode: 0", '  ErrorInfo: ""'],
        ),
    ],
    ids=["send-msg", "add-subscriber", "create"],
)
def test_send_in_process_describes_the_body_and_prints_the_decision(
    decider_server: GunicornServer, args: list[str], what: str, printed: list[str]
) -> None:
    """The same command through Flask's CLI runner (in this process), against the server."""
    from flask import Flask

    from flask_oa_recall import OARecall

    app = Flask("send_client")
    app.config.update(
        OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_TOKENS=[TOKEN], OA_RECALL_STORE="memory://"
    )
    OARecall(app)
    result = app.test_cli_runner().invoke(
        args=["oa-recall", "send", "--url", decider_server.base_url, *args]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == what
    assert lines[-len(printed) :] == printed
    assert TOKEN not in result.output
