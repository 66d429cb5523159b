"""The benchmark still runs end to end: a tiny ``python -m bench`` that writes its table.

No figure is asserted (the machine is shared and noisy); only that every expected row is there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

EXPECTED_ROWS = (
    "| floor: bare Flask route",
    "| memory store, signed, 1 MsgKey |",
    "| SQLite (default), signed, 1 MsgKey |",
)


def run_bench(tmp_path: Path, only: str, *extra: str) -> str:
    output = tmp_path / "RESULTS.md"
    command = [
        sys.executable, "-m", "bench", "--quick", "--rounds", "1", "--only", only,
        "--inproc-keys", "1,10", "--inproc-requests", "20", "--output", str(output), *extra,
    ]  # fmt: skip
    completed = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output.read_text()


@pytest.mark.e2e
def test_bench_with_the_python_load_generator_writes_every_table(tmp_path: Path) -> None:
    text = run_bench(
        tmp_path, "memory-signed-1,sqlite-signed-1", "--generator", "python", "--duration", "0.3"
    )
    for row in EXPECTED_ROWS:
        assert row in text
    assert "## 8 concurrent connections, one sync worker" in text
    assert "### Size of `WithdrawMsgList` (one receiver)" in text
    assert "| memory | " in text
    assert "| sqlite | " in text
    assert "- Machine: " in text
    assert "- Date: " in text


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_bench_with_wrk_writes_the_server_table(tmp_path: Path) -> None:
    text = run_bench(
        tmp_path, "memory-signed-1", "--generator", "wrk", "--duration", "1", "--no-inproc"
    )
    for row in EXPECTED_ROWS[:2]:
        assert row in text
    assert "Load generator: wrk" in text
