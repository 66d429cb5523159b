"""Start-up: the store is probed once, configuration errors name their key, and ``check`` turns
an app that cannot start into a FAIL line."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import OARecall, OARecallError, StoreError
from flask_oa_recall.errors import StoreUnavailable
from tests.servers import PROJECT_ROOT, _gunicorn_flags, run_flask, subprocess_env

from .conftest import SDK_APP_ID, TOKEN


def unreachable_store(tmp_path: Path) -> str:
    """A SQLite URL below a plain file: it can never be opened."""
    plain_file = tmp_path / "not-a-folder"
    plain_file.write_text("")
    return f"sqlite:///{plain_file}/deliveries.sqlite3"


def new_app(tmp_path: Path, **config: Any) -> Flask:
    app = Flask("startup", instance_path=str(tmp_path / "instance"))
    app.config.update(OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_TOKENS=[TOKEN])
    app.config.update({f"OA_RECALL_{k.upper()}": v for k, v in config.items()})
    return app


def test_an_unreachable_store_is_a_loud_warning_that_says_what_happens_meanwhile(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = new_app(tmp_path, store=unreachable_store(tmp_path))
    OARecall(app)  # starts anyway
    (record,) = [r for r in caplog.records if "UNREACHABLE" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.name == "flask_oa_recall.state"
    text = record.getMessage()
    for words in (
        "cannot be read and written (cannot open SQLite store",
        "verified, dispatched and answered, but NOT KEPT",
        "dispatched again (no dedup)",
        "answered 503 (delivery_not_kept)",
        "OA_RECALL_STORE_REQUIRED = True",
    ):
        assert words in text


def test_the_app_still_answers_and_dispatches_while_the_store_is_unreachable(
    tmp_path: Path,
) -> None:
    from flask_oa_recall.testing import capture, post_callback

    app = new_app(tmp_path, store=unreachable_store(tmp_path))
    OARecall(app)
    with capture(app) as seen:
        response = post_callback(app.test_client(), msg_keys=["9_1_1"])
    assert (response.status_code, response.json["ErrorCode"]) == (200, 0)
    assert seen.msg_keys == ["9_1_1"]
    assert len(seen.store_failures) == 1


def test_a_required_store_that_is_unreachable_stops_the_start_naming_the_key(
    tmp_path: Path,
) -> None:
    app = new_app(tmp_path, store=unreachable_store(tmp_path), store_required=True)
    with pytest.raises(StoreUnavailable, match="OA_RECALL_STORE_REQUIRED is True") as caught:
        OARecall(app)
    assert isinstance(caught.value, OARecallError)
    assert isinstance(caught.value, StoreError)
    assert caught.value.key == "OA_RECALL_STORE_REQUIRED"
    assert "cannot open SQLite store" in str(caught.value)
    assert "oa_recall" not in app.extensions


def test_a_reachable_store_starts_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    OARecall(new_app(tmp_path, store=f"sqlite:///{tmp_path}/ok.sqlite3", store_required=True))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_redis_password_is_not_in_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    OARecall(new_app(tmp_path, store=f"redis://:hunter2@127.0.0.1:{port}/0"))
    (record,) = [r for r in caplog.records if "UNREACHABLE" in r.getMessage()]
    assert "hunter2" not in record.getMessage()
    assert f"redis://:***@127.0.0.1:{port}/0" in record.getMessage()


BAD_CONFIG = [
    ({"path": "hooks"}, ValueError, "OA_RECALL_PATH must start with '/', got 'hooks'"),
    ({"path": None}, ValueError, "OA_RECALL_PATH must start with '/', got None"),
    ({"path": 5}, ValueError, "OA_RECALL_PATH must start with '/', got 5"),
    ({"store_required": "yes"}, TypeError, "OA_RECALL_STORE_REQUIRED must be True or False"),
    ({"metrics": 1}, TypeError, "OA_RECALL_METRICS must be True or False"),
    ({"tracing": None}, TypeError, "OA_RECALL_TRACING must be True or False"),
]


@pytest.mark.parametrize(
    ("config", "error", "words"),
    BAD_CONFIG,
    ids=["path-relative", "path-none", "path-int", "required-str", "metrics-int", "tracing-none"],
)
def test_init_app_errors_name_their_key(
    tmp_path: Path, config: dict[str, Any], error: type[Exception], words: str
) -> None:
    app = new_app(tmp_path, store="memory://", **config)
    with pytest.raises(error, match=words):
        OARecall(app)


CHECK_CASES = [
    ({"OA_RECALL_PATH": '"hooks"'}, "ConfigError: OA_RECALL_PATH must start with '/'"),
    ({"OA_RECALL_SDKAPPID": "null"}, "MissingConfig: OA_RECALL_SDKAPPID is not set"),
    ({"OA_RECALL_STORE_REQUIRED": "true"}, "StoreUnavailable: OA_RECALL_STORE_REQUIRED is True"),
]


@pytest.mark.parametrize(
    ("env", "words"), CHECK_CASES, ids=["path", "sdkappid-missing", "store-required"]
)
def test_check_reports_an_app_that_cannot_start_as_a_fail_line(
    tmp_path: Path, env: dict[str, str], words: str
) -> None:
    done = run_flask(
        "tests.apps.host:create_app()",
        "oa-recall",
        "check",
        env={
            "OA_TEST_RECORD": str(tmp_path / "record"),
            "OA_TEST_INSTANCE": str(tmp_path / "instance"),
            "OA_RECALL_STORE": unreachable_store(tmp_path),
            **env,
        },
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("FAIL  config  the app did not start: " + words)
    assert lines[-1] == "0 ok, 0 warnings, 1 failure"


def test_check_leaves_an_app_that_cannot_be_found_to_flask(tmp_path: Path) -> None:
    done = run_flask("tests.apps.no_such_module:create_app()", "oa-recall", "check")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    assert "Could not import 'tests.apps.no_such_module'" in done.stderr


@pytest.mark.e2e
def test_gunicorn_stops_when_a_required_store_is_unreachable(tmp_path: Path) -> None:
    env = subprocess_env(
        {
            "OA_TEST_RECORD": str(tmp_path / "record"),
            "OA_TEST_INSTANCE": str(tmp_path / "instance"),
            "OA_RECALL_STORE": unreachable_store(tmp_path),
            "OA_RECALL_STORE_REQUIRED": "true",
        }
    )
    args = ["--bind", "127.0.0.1:0", "--workers", "1", *_gunicorn_flags()]
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", *args, "tests.apps.host:create_app()"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # 3 (gunicorn's WORKER_BOOT_ERROR), or 1 when the halt races with reaping the worker.
    assert done.returncode in (1, 3), done.stderr[-2000:]
    assert "StoreUnavailable: OA_RECALL_STORE_REQUIRED is True" in done.stderr
    assert "Worker failed to boot" in done.stderr
