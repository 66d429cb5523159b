"""The pytest plugin, used as a host project uses it: installed, loaded by its entry point.

The ``pytester`` runs are real pytest subprocesses in an empty folder holding only a host app,
its ``conftest.py`` with an ``app`` fixture, and a test file; ``filterwarnings = error`` is on.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import RECALL_COMMAND, RecallEvent, messages_recalled
from flask_oa_recall.pytest_plugin import OARecallPost, OARecallUrl
from flask_oa_recall.testing import Captured, Rejected, callback_body

HOST_APP = """
from flask import Flask
from flask_oa_recall import OARecall, messages_recalled


def create_app(config=None):
    app = Flask(__name__)
    app.config.update(OA_RECALL_SDKAPPID=1400000000, OA_RECALL_TOKENS=["console-token"])
    app.config.update(config or {})
    OARecall(app)
    app.extensions["visible"] = {"71_1_1698741698", "72_1_1698741760"}

    @messages_recalled.connect_via(app)
    def hide(sender, event, **extra):
        for key in event.msg_keys:
            sender.extensions["visible"].discard(key)

    return app
"""

CONFTEST = """
import pytest
from myapp import create_app


@pytest.fixture
def app():
    return create_app({"TESTING": True, "OA_RECALL_STORE": "memory://"})
"""

# The testing example the README gave before the documentation moved to docs/.
README_TEST = """
def test_recall_hides_the_message(app, oa_recall_post, oa_recall_events):
    response = oa_recall_post(msg_keys=["71_1_1698741698"])
    assert response.json == {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
    assert [e.msg_keys for e in oa_recall_events] == [("71_1_1698741698",)]
    assert app.extensions["visible"] == {"72_1_1698741760"}
"""

MORE_TESTS = """
from flask_oa_recall import messages_recalled


def test_a_wrong_token_is_refused(oa_recall_post, oa_recall_captured):
    response = oa_recall_post(token="a-guess")
    assert response.status_code == 401
    assert response.json["ErrorCode"] == 40102
    assert [r.reason for r in oa_recall_captured.rejections] == ["bad_signature"]
    assert oa_recall_captured.recalls == []


def test_other_commands_with_pytest_flasks_client(client, oa_recall_url, oa_recall_callbacks):
    body = {"CallbackCommand": "State.StateChange", "EventTime": 1670574414123}
    response = client.post(oa_recall_url(command="State.StateChange"), json=body)
    assert response.json["ActionStatus"] == "OK"
    assert [c.command for c in oa_recall_callbacks] == ["State.StateChange"]


def test_a_failing_receiver_is_reported(app, oa_recall_post, oa_recall_captured):
    @messages_recalled.connect_via(app)
    def broken(sender, event, **extra):
        raise RuntimeError("search index is down")

    response = oa_recall_post(msg_keys=["72_1_1698741760"])
    assert response.json["ActionStatus"] == "OK"
    assert [str(f.exception) for f in oa_recall_captured.failures] == ["search index is down"]
    assert app.extensions["visible"] == {"71_1_1698741698"}
"""


@pytest.fixture
def host_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """An empty project with a host app, its conftest and a strict pytest configuration."""
    pytester.makeini(
        "[pytest]\naddopts = --strict-markers --strict-config\nfilterwarnings =\n    error\n"
    )
    pytester.makepyfile(myapp=HOST_APP, conftest=CONFTEST)
    return pytester


def test_a_host_project_tests_its_receivers_with_the_fixtures_alone(
    host_project: pytest.Pytester,
) -> None:
    host_project.makepyfile(test_readme=README_TEST, test_more=MORE_TESTS)
    result = host_project.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.stdout.fnmatch_lines(["*test_readme.py::test_recall_hides_the_message PASSED*"])
    result.assert_outcomes(passed=4)
    assert "warning" not in result.stdout.str().lower()


MODULE_LEVEL_APP = """
from flask import Flask
from flask_oa_recall import OARecall

app = Flask(__name__)
app.config.update(OA_RECALL_SDKAPPID=1400000000, OA_RECALL_TOKENS=["console-token"])
OARecall(app)
"""

MODULE_LEVEL_CONFTEST = """
import pytest
from moduleapp import app as module_app


@pytest.fixture
def app():
    module_app.config.update(TESTING=True, OA_RECALL_STORE="memory://")
    return module_app
"""

SAME_KEY_TWICE = """
def test_first(oa_recall_post, oa_recall_events):
    oa_recall_post(msg_keys=["71_1_1698741698"])
    assert len(oa_recall_events) == 1


def test_second_sends_the_same_key(oa_recall_post, oa_recall_events, oa_recall_store):
    assert oa_recall_store.deliveries() == []
    oa_recall_post(msg_keys=["71_1_1698741698"])
    assert len(oa_recall_events) == 1
    assert len(oa_recall_store.deliveries()) == 1
"""


def test_a_module_level_app_gets_an_empty_memory_store_in_every_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n")
    pytester.makepyfile(
        moduleapp=MODULE_LEVEL_APP, conftest=MODULE_LEVEL_CONFTEST, test_twice=SAME_KEY_TWICE
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_fixtures_are_listed_with_their_documentation(host_project: pytest.Pytester) -> None:
    result = host_project.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures")
    assert result.ret == 0
    output = result.stdout.str()
    for name in (
        "oa_recall_post",
        "oa_recall_events",
        "oa_recall_callbacks",
        "oa_recall_captured",
        "oa_recall_url",
        "oa_recall_store",
    ):
        assert name in output
    assert "Post a signed callback to ``app`` in one line" in output


def test_the_plugin_can_be_switched_off(host_project: pytest.Pytester) -> None:
    host_project.makepyfile(test_readme=README_TEST)
    result = host_project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:oa_recall")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'oa_recall_post' not found*"])


# The same fixtures in this suite's own process (the conftest's ``app``).


def test_oa_recall_post_and_events(
    app: Flask, oa_recall_post: OARecallPost, oa_recall_events: list[RecallEvent]
) -> None:
    response = oa_recall_post(msg_keys=["1_1_1", "2_1_2"], official_account="@TOA#_a")
    assert response.status_code == 200
    assert response.json == {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
    assert [(e.official_account, e.msg_keys) for e in oa_recall_events] == [
        ("@TOA#_a", ("1_1_1", "2_1_2"))
    ]


def test_oa_recall_post_with_a_body_and_the_captured_callbacks(
    oa_recall_post: OARecallPost, oa_recall_captured: Captured, oa_recall_callbacks: list[Any]
) -> None:
    response = oa_recall_post(callback_body("Sns.CallbackFriendAdd"))
    assert response.json["ErrorCode"] == 0
    refused = oa_recall_post(token="wrong")
    assert refused.status_code == 401
    assert [c.command for c in oa_recall_callbacks] == ["Sns.CallbackFriendAdd"]
    assert oa_recall_captured.rejections == [Rejected("bad_signature", 40102, 401)]


def test_oa_recall_url_is_signed_for_the_app(
    app: Flask, oa_recall_url: OARecallUrl, oa_recall_events: list[RecallEvent]
) -> None:
    url = oa_recall_url()
    assert url.startswith("/tencent-im/callback?SdkAppid=1400000000&")
    assert f"CallbackCommand={RECALL_COMMAND}" in url
    body = b'{"CallbackCommand":"%s","Official_Account":"@TOA#_1",' % RECALL_COMMAND.encode()
    body += b'"WithdrawMsgList":[{"MsgKey":"3_1_3"}],"EventTime":"1670574414123"}'
    response = app.test_client().post(url, data=body)
    assert response.json["ErrorCode"] == 0
    assert [e.msg_keys for e in oa_recall_events] == [("3_1_3",)]


def test_the_capture_ends_with_the_test(app: Flask) -> None:
    # The previous tests' recorders were connected to their own apps only, and disconnected.
    assert all(
        "capture[" not in getattr(r, "__qualname__", "")
        for r in messages_recalled.receivers_for(app)
    )
