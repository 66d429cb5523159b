"""The example under gunicorn, as an operator sees it: log lines with time and level, JSON lines
for a log shipper, and ``/metrics`` counting what every worker did."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flask_oa_recall import RECALL_COMMAND
from flask_oa_recall.testing import recall_body, sign
from tests.servers import CallbackClient, GunicornServer, example_server, run_flask, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "change-me"
APP_ID = 1400000000
EXAMPLE = "examples/mirror_app.py:create_app"

#: gunicorn's error-log layout: ``[2026-12-02 03:16:29 +0000] [24375] [WARNING] name: message``.
LOG_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4})\] \[(\d+)\] \[([A-Z]+)\] ([\w.]+): (.*)$"
)


#: gunicorn's own lines: the same time, pid and level, without a logger name.
GUNICORN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[INFO\] ")


def example_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OA_RECALL_STORE": f"sqlite:///{tmp_path}/deliveries.sqlite3",
        "MIRROR_DATABASE": str(tmp_path / "mirror" / "mirror.sqlite3"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        **extra,
    }


@pytest.fixture
def example(tmp_path: Path) -> Iterator[GunicornServer]:
    (tmp_path / "metrics").mkdir()
    with example_server(tmp_path / "log", env=example_env(tmp_path), workers=3) as server:
        yield server


def bad_sign(server: GunicornServer, client_ip: str = "203.0.113.9") -> tuple[int, str]:
    """POST a recall whose Sign is wrong; return the status and the Sign sent."""
    when = str(int(time.time()))
    forged = sign("not-the-token", when)
    client = CallbackClient(server.base_url, sdk_app_id=APP_ID, token=None)
    url = client.url(client_ip=client_ip) + f"&Sign={forged}&RequestTime={when}"
    body = json.dumps(recall_body(["1_1_1"])).encode()
    with client:
        response = client.send(body, url)
        response.read()
    return response.status, forged


def log_lines(server: GunicornServer) -> list[re.Match[str]]:
    return [m for line in server.log().splitlines() if (m := LOG_LINE.match(line))]


def test_a_rejection_is_logged_with_time_and_level_next_to_gunicorns_lines(
    example: GunicornServer,
) -> None:
    status, forged = bad_sign(example)
    assert status == 401

    def rejection() -> list[re.Match[str]]:
        return [m for m in log_lines(example) if "rejected a callback" in m.group(5)]

    (line,) = wait_for(rejection, what="the rejection in the log")
    when, pid, level, logger, message = line.groups()
    logged_at = datetime.strptime(when, "%Y-%m-%d %H:%M:%S %z").timestamp()
    assert abs(logged_at - time.time()) < 120
    assert level == "WARNING"
    assert logger == "flask_oa_recall.logging"
    assert int(pid) in example.worker_pids()
    assert message == (
        "rejected a callback from 127.0.0.1 (ClientIP 203.0.113.9): bad_signature (HTTP 401):"
        " Sign does not match any configured token."
    )
    booting = [line for line in example.log().splitlines() if "Booting worker" in line]
    assert booting
    assert all(GUNICORN_LINE.match(line) for line in booting), "gunicorn's lines look alike"
    assert forged not in example.log()
    assert TOKEN not in example.log()


def test_json_lines_for_a_log_shipper(tmp_path: Path) -> None:
    env = example_env(tmp_path, LOG_FORMAT="json")
    (tmp_path / "metrics").mkdir()
    with example_server(tmp_path / "log", env=env, workers=1) as server:
        status, forged = bad_sign(server)
        assert status == 401

        def record() -> dict[str, object] | None:
            for line in server.log().splitlines():
                if line.startswith("{") and "rejected a callback" in line:
                    return dict(json.loads(line))
            return None

        found = wait_for(record, what="the JSON line")
    assert found["level"] == "WARNING"
    assert found["logger"] == "flask_oa_recall.logging"
    assert found["reason"] == "bad_signature"
    assert found["remote_addr"] == "127.0.0.1"
    assert found["client_ip"] == "203.0.113.9"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(found["time"]))
    assert forged not in server.log()


def scrape(server: GunicornServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        conn.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_every_workers_callbacks(example: GunicornServer, tmp_path: Path) -> None:
    sent = run_flask(
        EXAMPLE,
        "oa-recall",
        "send",
        "--url",
        example.base_url,
        env=example_env(tmp_path),
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    client = CallbackClient(example.base_url, sdk_app_id=APP_ID, token=TOKEN)
    with client:
        for i in range(8):
            assert client.recall([f"{i}_1_1698741698"], official_account="@TOA#_news")[0] == 200
    for _ in range(5):
        assert bad_sign(example)[0] == 401

    recall = (("command", RECALL_COMMAND), ("outcome", "done"))
    # Each scrape is answered by whichever worker accepts it: every one must see the sums.
    for _ in range(6):
        samples = scrape(example)
        assert samples[("oa_recall_callbacks_total", recall)] == 9
        assert samples[("oa_recall_rejections_total", (("reason", "bad_signature"),))] == 5
        assert samples[("oa_recall_dispatch_seconds_count", (("command", RECALL_COMMAND),))] == 9
        assert samples[("oa_recall_deliveries_waiting", (("status", "failed"),))] == 0
    assert len({p.name for p in (tmp_path / "metrics").iterdir()}) >= 2, "several workers counted"
