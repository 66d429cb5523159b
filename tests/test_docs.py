"""The README and the documentation say what the code does, and their samples run as written.

The Quick start (``examples/quickstart``, quoted in the README and in docs/getting-started.rst)
is run the way a new user would: the app under gunicorn, a recall sent with
``flask oa-recall send``, its tests with plain ``pytest``, and ``flask oa-recall check`` from
another folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_oa_recall.cli.check import SAMPLE_TOKENS
from flask_oa_recall.cli.send import DEFAULT_BASE_URL
from flask_oa_recall.config import DEFAULTS, DESCRIPTIONS, REQUIRED

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
QUICKSTART = ROOT / "examples" / "quickstart"
BIN = Path(sys.executable).parent


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def python_file_blocks() -> dict[str, str]:
    """The README's Python blocks that start with ``# name.py``, by name, without that line."""
    files = {}
    for block in code_blocks(README, "python"):
        first, _, rest = block.partition("\n")
        if re.fullmatch(r"# \w+\.py", first):
            files[first[2:]] = rest
    return files


# -- The configuration reference ------------------------------------------------------------------


def test_every_config_key_has_a_description() -> None:
    # docs/_ext/oa_recall_docs.py builds the reference from these; a key without a text there
    # would stop the docs build, so a new key must come with its description.
    assert set(DESCRIPTIONS) == {*REQUIRED, *DEFAULTS}
    assert all(text.strip() for text in DESCRIPTIONS.values())


def test_the_api_page_documents_every_public_name() -> None:
    import flask_oa_recall

    api = (ROOT / "docs" / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: (\w+)$", api, flags=re.M))
    assert set(flask_oa_recall.__all__) <= documented
    assert ".. automodule:: flask_oa_recall.testing" in api
    assert ".. automodule:: flask_oa_recall.pytest_plugin" in api


# -- The README -----------------------------------------------------------------------------------


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    (readme_command,) = [b.strip() for b in code_blocks(README, "sh") if "-m pytest" in b]
    runner = ".venv/bin/python -m pytest"
    ci_commands = [line for line in ci.splitlines() if line.startswith(runner)]
    assert ci_commands == [readme_command]


def test_the_readme_quick_start_is_the_tested_example() -> None:
    files = python_file_blocks()
    assert files["app.py"] == (QUICKSTART / "app.py").read_text()
    assert files["conftest.py"] == (QUICKSTART / "conftest.py").read_text()
    assert files["test_app.py"] in (QUICKSTART / "test_app.py").read_text()


def test_the_quick_start_installs_what_it_runs() -> None:
    (install,) = [b for b in code_blocks(README, "sh") if "flask-oa-recall gunicorn" in b]
    assert "pytest" in install.split()
    assert "pytest-flask" not in README.replace("pytest-flask is not needed", "")


def test_the_readme_has_no_link_that_breaks_on_the_package_index() -> None:
    # PyPI shows the README without the repository around it: a relative link would be dead.
    links = re.findall(r"\]\(([^)]+)\)", README)
    assert [link for link in links if not link.startswith("https://")] == []


def test_send_posts_where_gunicorn_serves_by_default() -> None:
    from gunicorn.config import Config

    assert f"http://{Config().bind[0]}" == DEFAULT_BASE_URL


def test_every_token_in_the_docs_is_a_sample_that_check_refuses() -> None:
    texts = [README, *(p.read_text() for p in (ROOT / "docs").glob("*.rst"))]
    texts += [p.read_text() for p in (ROOT / "examples").rglob("*.py")]
    tokens = {
        token
        for text in texts
        for listed in re.findall(r"OA_RECALL_TOKENS\"?\]?\s*=\s*\[([^\]]*)\]", text)
        for token in re.findall(r"\"([^\",]+)\"", listed)
    }
    assert "token-from-the-console" in tokens
    assert tokens <= SAMPLE_TOKENS


# -- The Quick start, run as a new user would ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the Quick start's files in a folder of their own, as a user would have them."""
    folder = tmp_path / "myapp"
    folder.mkdir()
    for name in ("app.py", "conftest.py", "test_app.py"):
        shutil.copy(QUICKSTART / name, folder / name)
    return folder


def user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_", "FLASK_"))}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture
def served(project: Path) -> Iterator[tuple[int, Path]]:
    """``gunicorn app:app`` in the project folder, on a free port; yields (port, its log)."""
    port = free_port()
    log_path = project / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [BIN / "gunicorn", "--bind", f"127.0.0.1:{port}", "--no-control-socket", "app:app"],
            cwd=project,
            env=user_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        yield port, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def run(
    project: Path, *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd or project,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.e2e
def test_the_quick_start_app_receives_a_recall_under_gunicorn(
    project: Path, served: tuple[int, Path]
) -> None:
    port, log = served
    url = f"http://127.0.0.1:{port}"
    sent = run(
        project,
        BIN / "flask",
        "--app",
        "app",
        "oa-recall",
        "send",
        "--url",
        url,
        "--msg-key",
        "71_1_1698741698",
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "HTTP 200 OK" in sent.stdout
    deadline = time.monotonic() + 10
    while "hide @TOA#_test 71_1_1698741698" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    again = run(
        project,
        BIN / "flask",
        "--app",
        "app",
        "oa-recall",
        "send",
        "--url",
        url,
        "--msg-key",
        "71_1_1698741698",
    )
    assert again.returncode == 0
    time.sleep(0.5)
    assert log.read_text().count("hide @TOA#_test 71_1_1698741698") == 1


@pytest.mark.e2e
def test_the_quick_start_tests_pass_with_plain_pytest(project: Path) -> None:
    # ``pytest``, not ``python -m pytest``: the latter puts the folder on sys.path by itself.
    result = run(project, BIN / "pytest", "-q", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


@pytest.mark.e2e
def test_check_works_from_any_folder_and_strict_refuses_the_placeholder(
    project: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    app = project / "app.py"
    plain = run(project, BIN / "flask", "--app", app, "oa-recall", "check", cwd=elsewhere)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "POST /tencent-im/callback" in plain.stdout
    assert f"sqlite:///{project}/instance/oa_recall.sqlite3" in plain.stdout
    strict = run(
        project, BIN / "flask", "--app", app, "oa-recall", "check", "--strict", cwd=elsewhere
    )
    assert strict.returncode == 1
    assert "published sample token" in strict.stdout
