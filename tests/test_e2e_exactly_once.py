"""Exactly once, end to end: real gunicorn workers, real HTTP, real stores, real ``flask`` CLI.

The receivers of ``tests.apps.host`` keep their own record (one line per receiver and MsgKey,
appended by whichever worker process ran them); each test compares that record with what it
sent. Every wait is bounded; nothing asserts on how long something took.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from flask_oa_recall.store import Delivery, SQLiteStore
from tests.apps.host import SDK_APP_ID, TOKEN
from tests.servers import (
    CallbackClient,
    GunicornServer,
    gunicorn_server,
    postgres_schema,
    redis_prefixed,
    run_flask,
    wait_for,
)

pytestmark = pytest.mark.e2e

APP = "tests.apps.host:create_app()"
OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


@dataclass
class Host:
    """The environment the servers and the CLI share, and the receivers' record."""

    tmp: Path
    env: dict[str, str]

    @property
    def record_path(self) -> Path:
        return Path(self.env["OA_TEST_RECORD"])

    def record(self) -> list[tuple[str, str, int, str]]:
        """``(what, receiver, pid, key)`` per line, in the order they were written."""
        if not self.record_path.exists():
            return []
        lines = self.record_path.read_text().splitlines()
        return [(w, r, int(p), k) for w, r, p, k in (line.split(" ", 3) for line in lines)]

    def count(self, what: str, receiver: str) -> Counter[str]:
        """How often ``receiver`` wrote ``what`` for each key."""
        return Counter(k for w, r, _, k in self.record() if (w, r) == (what, receiver))

    def client(self, server: GunicornServer) -> CallbackClient:
        return CallbackClient(server.base_url, sdk_app_id=SDK_APP_ID, token=TOKEN)

    def flask(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``flask --app tests.apps.host:create_app() <args>`` in a real subprocess."""
        full = {k: v for k, v in self.env.items() if not k.startswith("OA_TEST_BLOCK")}
        return run_flask(APP, *args, env={**full, **env})

    def sqlite(self) -> SQLiteStore:
        """The default store, the file every worker and the CLI share."""
        return SQLiteStore(str(self.tmp / "instance" / "oa_recall.sqlite3"))


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    # The host app reads every OA_RECALL_* variable; only the test's own may reach it.
    for name in list(os.environ):
        if name.startswith(("OA_RECALL_", "OA_TEST_")):
            monkeypatch.delenv(name)
    env = {
        "OA_TEST_RECORD": str(tmp_path / "record.txt"),
        "OA_TEST_INSTANCE": str(tmp_path / "instance"),
    }
    return Host(tmp_path, env)


def _post_concurrently(
    base_urls: list[str], batches: list[list[str]], threads: int = 8
) -> list[tuple[int, dict[str, object]]]:
    """Post a recall per batch from ``threads`` threads, spread over ``base_urls`` in turn."""

    def post(job: tuple[int, list[str]]) -> tuple[int, dict[str, object]]:
        index, keys = job
        base_url = base_urls[index % len(base_urls)]
        with CallbackClient(base_url, sdk_app_id=SDK_APP_ID, token=TOKEN) as client:
            return client.recall(keys)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(post, enumerate(batches)))


def _redeliveries(keys: list[str], copies: int, seed: int) -> list[list[str]]:
    """Recalls of overlapping pairs of ``keys`` (some keys new, some known), each sent
    ``copies`` times, shuffled."""
    callbacks = [keys[i : i + 2] for i in range(len(keys))]
    batches = [list(c) for c in callbacks for _ in range(copies)]
    random.Random(seed).shuffle(batches)
    return batches


def test_concurrent_redeliveries_on_several_workers_reach_the_receiver_once(host: Host) -> None:
    keys = [f"{i}_1_1698741{i:03d}" for i in range(30)]
    batches = _redeliveries(keys, copies=3, seed=1)

    with gunicorn_server(APP, host.tmp, env=host.env, workers=4) as server:
        answers = _post_concurrently([server.base_url], batches)

    assert answers == [(200, OK)] * len(batches)
    assert host.count("done", "mirror") == dict.fromkeys(keys, 1)
    assert {w for w, *_ in host.record()} == {"start", "done"}
    kept = host.sqlite().deliveries(limit=1000)
    assert len(kept) == len(batches)
    assert {d.status for d in kept} <= {"done", "duplicate"}
    # callback_received fires for every accepted request, duplicates included, once each.
    assert host.count("done", "audit") == {d.id: 1 for d in kept}


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A store both servers reach: Redis with a key prefix of this test's own, or PostgreSQL
    with a schema of its own; removed afterwards."""
    if request.param == "redis":
        with redis_prefixed(request.getfixturevalue("redis_url")) as url:
            yield url
    else:
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            yield url


def test_two_servers_sharing_a_store_dispatch_each_recall_once(
    host: Host, shared_store_url: str
) -> None:
    keys = [f"{i}_1_1698742{i:03d}" for i in range(30)]
    batches = _redeliveries(keys, copies=4, seed=2)
    # Each master uses the store before it forks its workers (--preload): the workers must
    # open connections of their own, never share the master's.
    env = {**host.env, "OA_RECALL_STORE": shared_store_url, "OA_TEST_PING_STORE": "1"}

    with (
        gunicorn_server(APP, host.tmp, env=env, workers=2, preload=True, name="host-a") as a,
        gunicorn_server(APP, host.tmp, env=env, workers=2, preload=True, name="host-b") as b,
    ):
        answers = _post_concurrently([a.base_url, b.base_url], batches)
        pids_a, pids_b = set(a.worker_pids()), set(b.worker_pids())

    assert answers == [(200, OK)] * len(batches)
    assert host.count("done", "mirror") == dict.fromkeys(keys, 1)
    audit_pids = {pid for w, r, pid, _ in host.record() if r == "audit"}
    assert audit_pids & pids_a
    assert audit_pids & pids_b
    listed = host.flask(
        "oa-recall", "deliveries", "--json", "--limit", "1000", OA_RECALL_STORE=shared_store_url
    )
    assert listed.returncode == 0, listed.stderr
    kept = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(kept) == len(batches)
    assert {d["status"] for d in kept} <= {"done", "duplicate"}


def _pending(host: Host) -> Delivery:
    (delivery,) = host.sqlite().deliveries(statuses=["pending"])
    return delivery


def _kill_the_worker_in_mirror(host: Host, server: GunicornServer, keys: list[str]) -> int:
    """Wait until ``mirror`` started on ``keys`` in some worker, SIGKILL that worker."""
    started = wait_for(
        lambda: {p for w, r, p, k in host.record() if (w, r) == ("start", "mirror") and k in keys},
        what="mirror to start",
    )
    (pid,) = started
    assert pid in server.worker_pids()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid not in server.worker_pids(), what=f"worker {pid} to die")
    return int(pid)


def test_a_worker_killed_mid_receiver_leaves_the_delivery_pending_and_replay_finishes_it(
    host: Host,
) -> None:
    keys = ["71_1_1698741698", "72_1_1698741760"]
    env = {
        **host.env,
        "OA_RECALL_LEASE_SECONDS": "1",
        "OA_TEST_BLOCK_UNTIL": str(host.tmp / "never"),
    }
    with gunicorn_server(APP, host.tmp, env=env, workers=2) as server:
        conn = host.client(server).start(keys)
        try:
            killed = _kill_the_worker_in_mirror(host, server, keys)
            with pytest.raises(ConnectionError):
                conn.getresponse().read()
        finally:
            conn.close()

    delivery = _pending(host)
    assert delivery.msg_keys == tuple(keys)
    assert host.count("done", "mirror") == {}
    wait_for(
        lambda: host.flask("oa-recall", "deliveries", "--pending").stdout.count("interrupted") == 1,
        what="the lease to run out",
    )

    replay = host.flask("oa-recall", "replay", "--pending")

    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert replay.stdout.splitlines() == [
        f"{delivery.id}  done       attempt 2; ran: callback_received:tests.apps.host.audit ok,"
        " messages_recalled:tests.apps.host.mirror ok",
        "Replayed 1: 1 finished, 0 not.",
    ]
    assert host.count("done", "mirror") == dict.fromkeys(keys, 1)
    starts = [(p, k) for w, r, p, k in host.record() if (w, r) == ("start", "mirror")]
    assert [p for p, _ in starts[:2]] == [killed, killed]
    assert all(p != killed for p, _ in starts[2:])
    kept = host.sqlite().get(delivery.id)
    assert kept is not None
    assert (kept.status, kept.attempts) == ("done", 2)


def test_a_receiver_that_fails_first_is_completed_by_replay_and_the_others_do_not_rerun(
    host: Host,
) -> None:
    keys = ["81_1_1698741800", "82_1_1698741801"]
    (host.tmp / "flaky").mkdir()
    env = {**host.env, "OA_TEST_FLAKY_DIR": str(host.tmp / "flaky")}
    with gunicorn_server(APP, host.tmp, env=env, workers=2) as server:
        assert host.client(server).recall(keys) == (200, OK)

        # The worker records the outcome with its next write, or within GROUP_SECONDS.
        (delivery,) = wait_for(
            lambda: [d for d in host.sqlite().deliveries() if d.status != "pending"],
            what="the outcome to be recorded",
        )
        assert delivery.status == "failed"
        assert dict(delivery.receivers) == {
            "callback_received:tests.apps.host.audit": "ok",
            "messages_recalled:tests.apps.host.mirror": "ok",
            "messages_recalled:tests.apps.host.flaky": "failed",
        }
        listed = host.flask("oa-recall", "deliveries", "--failed", **env)
        assert listed.returncode == 0
        assert "messages_recalled:tests.apps.host.flaky" in listed.stdout
        assert "RuntimeError: flaky receiver fails the first time, for 2 ..." in listed.stdout

        replay = host.flask("oa-recall", "replay", "--failed", **env)

        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert replay.stdout.splitlines() == [
            f"{delivery.id}  done       attempt 2; ran: messages_recalled:tests.apps.host.flaky ok",
            "Replayed 1: 1 finished, 0 not.",
        ]
        assert host.count("fail", "flaky") == dict.fromkeys(keys, 1)
        assert host.count("done", "flaky") == dict.fromkeys(keys, 1)
        assert host.count("done", "mirror") == dict.fromkeys(keys, 1)
        assert host.count("done", "audit") == {delivery.id: 1}

        # Tencent's retry after the replay: acknowledged, and no recall receiver runs again.
        assert host.client(server).recall(keys) == (200, OK)
        again = host.flask("oa-recall", "replay", "--failed", **env)

    assert again.returncode == 0
    assert again.stdout == "Nothing to replay.\n"
    assert host.count("done", "flaky") == dict.fromkeys(keys, 1)
    assert host.count("done", "mirror") == dict.fromkeys(keys, 1)
    statuses = sorted(d.status for d in host.sqlite().deliveries())
    assert statuses == ["done", "duplicate"]


def test_after_response_answers_first_then_runs_the_receivers(host: Host) -> None:
    go = host.tmp / "go"
    env = {
        **host.env,
        "OA_RECALL_DISPATCH": "after_response",
        "OA_RECALL_LEASE_SECONDS": "1",
        "OA_TEST_BLOCK_UNTIL": str(go),
    }
    keys = ["91_1_1698741900", "92_1_1698741901"]
    with gunicorn_server(APP, host.tmp, env=env, workers=2) as server:
        # mirror waits for the go file, which exists only once the answer is here: had the
        # answer waited for mirror, mirror would have written "timeout", not "done".
        answer = host.client(server).recall(keys)
        go.touch()
        wait_for(lambda: len(host.count("done", "mirror")) == 2, what="mirror to finish")

        assert answer == (200, OK)
        assert host.count("done", "mirror") == dict.fromkeys(keys, 1)
        assert host.count("timeout", "mirror") == {}
        wait_for(lambda: host.sqlite().deliveries()[0].status == "done", what="finish")


def test_after_response_a_crash_after_the_answer_leaves_the_delivery_for_replay(
    host: Host,
) -> None:
    env = {
        **host.env,
        "OA_RECALL_DISPATCH": "after_response",
        "OA_RECALL_LEASE_SECONDS": "1",
        "OA_TEST_BLOCK_UNTIL": str(host.tmp / "never"),
    }
    keys = ["93_1_1698741902"]
    with gunicorn_server(APP, host.tmp, env=env, workers=2) as server:
        assert host.client(server).recall(keys) == (200, OK)
        _kill_the_worker_in_mirror(host, server, keys)

    delivery = _pending(host)
    assert host.count("done", "mirror") == {}
    wait_for(
        lambda: host.flask("oa-recall", "deliveries", "--pending").stdout.count("interrupted") == 1,
        what="the lease to run out",
    )

    replay = host.flask("oa-recall", "replay", "--pending")

    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert replay.stdout.splitlines()[0].startswith(f"{delivery.id}  done ")
    assert host.count("done", "mirror") == dict.fromkeys(keys, 1)
