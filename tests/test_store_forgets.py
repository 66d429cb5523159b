"""A store that forgets: Redis without persistence, restarted.

Private ``redis-server`` processes of these tests' own (never the machine's shared one), with
and without an append-only file, show that the extension

- says at start-up and in ``check`` when the store keeps nothing across a restart ("unknown"
  where the server refuses ``CONFIG``);
- notices when the store forgot (its marker is gone): an ERROR and ``store_forgot``;
- with ``OA_RECALL_JOURNAL`` on, loses nothing: ``replay`` brings back from the host's journal
  what the store lost, and dispatches it.

The last test is a bounded run under gunicorn with a restart in the middle, printing what was
accepted, replayed and lost, with and without the journal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import durability, messages_recalled, store_forgot
from flask_oa_recall.cli.check import run_checks
from flask_oa_recall.durability import Persistence, redis_persistence
from flask_oa_recall.guarded import RESTORED_ERROR, GuardedStore
from flask_oa_recall.state import get_state
from flask_oa_recall.store import Store
from flask_oa_recall.testing import post_callback
from tests.apps.host import SDK_APP_ID, TOKEN
from tests.hardening_apps.record import read_record
from tests.hardening_apps.redis_server import PrivateRedis, private_redis
from tests.servers import gunicorn_server, run_flask, wait_for

from .conftest import AppFactory

pytestmark = pytest.mark.redis

OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


def _need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs redis-server on PATH")
        pytest.skip("redis-server is not installed")


@pytest.fixture
def forgetful(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis that keeps nothing on disk."""
    _need_redis_server()
    with private_redis(tmp_path / "forgetful", persistent=False) as server:
        yield server


@pytest.fixture
def persistent(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis with an append-only file."""
    _need_redis_server()
    with private_redis(tmp_path / "persistent") as server:
        yield server


@pytest.fixture
def no_config(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis whose user may not run CONFIG or INFO, as on managed services."""
    _need_redis_server()
    folder = tmp_path / "no-config"
    args = ("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-config", "-info")
    with private_redis(folder, persistent=False, extra_args=args) as server:
        yield server


@pytest.fixture
def check_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Look at the store's marker before every delivery, not every few seconds."""
    monkeypatch.setattr(durability, "FORGET_CHECK_SECONDS", 0.0)


def restart(server: PrivateRedis) -> None:
    server.stop()
    server.start()


def guarded(app: Flask) -> GuardedStore:
    state = get_state(app)
    store: Store = state.store(state.settings(app.config))
    assert isinstance(store, GuardedStore)
    return store


def findings(app: Flask, topic: str) -> list[tuple[str, str]]:
    return [(f.level, f.text) for f in run_checks(app) if f.topic == topic]


@pytest.mark.parametrize(
    ("config", "keeps", "says"),
    [
        ({"appendonly": "yes", "save": ""}, True, "append-only file on"),
        ({"appendonly": "yes", "save": "3600 1"}, True, "append-only file on"),
        ({"appendonly": "no", "save": "3600 1 300 100"}, False, "RDB snapshots only"),
        ({"appendonly": "no", "save": ""}, False, "nothing is kept on disk"),
        ({}, False, "nothing is kept on disk"),
        (
            {"appendonly": "yes", "maxmemory": "1000000", "maxmemory-policy": "allkeys-lru"},
            False,
            "evicts kept deliveries",
        ),
        (
            {"appendonly": "yes", "maxmemory": "1000000", "maxmemory-policy": "volatile-lru"},
            True,
            "append-only file on",
        ),
        (
            {"appendonly": "yes", "maxmemory": "0", "maxmemory-policy": "allkeys-lru"},
            True,
            "append-only file on",
        ),
    ],
    ids=[
        "aof",
        "aof-and-rdb",
        "rdb-only",
        "nothing",
        "empty-answer",
        "allkeys-eviction",
        "volatile-eviction",
        "eviction-without-limit",
    ],
)
def test_redis_persistence_is_judged_from_its_config(
    config: dict[str, str], keeps: bool, says: str
) -> None:
    persistence = redis_persistence(config)
    assert persistence.keeps is keeps
    assert says in persistence.text


def test_a_redis_that_keeps_nothing_is_warned_about_once_at_start_up_and_in_check(
    make_app: AppFactory, forgetful: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_oa_recall"):
        app = make_app(store=forgetful.url)
        make_app(store=forgetful.url)  # a second app in the same process: no second warning
    warnings = [r.message for r in caplog.records if "may forget" in r.message]
    assert len(warnings) == 1
    assert forgetful.url in warnings[0]
    assert "nothing is kept on disk" in warnings[0]
    assert "LOST" in warnings[0]
    assert "appendonly yes" in warnings[0]
    assert "OA_RECALL_JOURNAL" in warnings[0]
    ((level, text),) = findings(app, "durability")
    assert level == "WARN"
    assert "nothing is kept on disk" in text
    assert findings(app, "memory")[0][0] == "OK"
    get_state(app).close()


def test_check_fails_under_strict_for_a_redis_that_keeps_nothing_and_passes_with_aof(
    make_app: AppFactory, forgetful: PrivateRedis, persistent: PrivateRedis
) -> None:
    def strict(url: str) -> tuple[int, str]:
        app = make_app(store=url, tokens=["a-real-token"])
        messages_recalled.connect(lambda sender, **kw: None, app, weak=False)
        result = app.test_cli_runner().invoke(args=["oa-recall", "check", "--strict"])
        get_state(app).close()
        return result.exit_code, result.output

    code, output = strict(forgetful.url)
    assert code == 1, output
    assert "WARN  durability" in output
    code, output = strict(persistent.url)
    assert code == 0, output
    assert "OK    durability  kept across restarts: append-only file on" in output


def test_a_redis_that_refuses_config_is_unknown_and_not_warned_about_at_start_up(
    make_app: AppFactory, no_config: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_oa_recall"):
        app = make_app(store=no_config.url)
    assert [r for r in caplog.records if "may forget" in r.message] == []
    persistence = guarded(app).persistence()  # the wrapper passes it to the Redis store
    assert isinstance(persistence, Persistence)
    assert persistence.keeps is None
    assert persistence.text.startswith("unknown")
    ((level, text),) = findings(app, "durability")
    assert level == "WARN"
    assert text.startswith("unknown")
    marker = guarded(app).marker()
    assert marker.server_run_id == ""  # no INFO: no run id, still a marker
    get_state(app).close()


def test_a_restart_that_forgets_is_reported_as_an_error_and_with_store_forgot(
    make_app: AppFactory,
    forgetful: PrivateRedis,
    check_always: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(store=forgetful.url)
    heard: list[dict[str, Any]] = []

    def on_forgot(sender: Flask, **kwargs: Any) -> None:
        assert sender is app
        heard.append(kwargs)

    client = app.test_client()
    with store_forgot.connected_to(on_forgot, app):
        assert post_callback(client, app, msg_keys=["before"]).status_code == 200
        restart(forgetful)
        with caplog.at_level(logging.ERROR, logger="flask_oa_recall"):
            assert post_callback(client, app, msg_keys=["after-1"]).status_code == 200
            assert post_callback(client, app, msg_keys=["after-2"]).status_code == 200
    errors = [r.message for r in caplog.records if "forgot" in r.message]
    assert len(errors) == 1  # once per incident, not once per request
    assert "restarted without keeping its data" in errors[0]
    assert "LOST" in errors[0]
    assert len(heard) == 1
    assert heard[0]["store_url"] == forgetful.url
    assert "forgot what it held" in heard[0]["detail"]
    assert heard[0]["journalled"] is None
    memory = findings(app, "memory")
    assert memory[0][0] == "FAIL"
    assert "forgot what it held" in memory[0][1]
    get_state(app).close()


def test_keys_deleted_by_hand_are_reported_too(
    make_app: AppFactory, forgetful: PrivateRedis, check_always: None
) -> None:
    import redis

    app = make_app(store=forgetful.url)
    store = guarded(app)
    client = redis.Redis.from_url(forgetful.url)
    try:
        client.flushdb()
    finally:
        client.close()
    report = store.watch.check() if store.watch else None
    assert report is not None
    assert not report.restarted
    assert "keys were deleted" in report.describe()
    get_state(app).close()


def test_with_the_journal_replay_brings_back_what_the_store_forgot(
    make_app: AppFactory,
    forgetful: PrivateRedis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    healed = tmp_path / "healed"
    dispatched: list[str] = []

    def picky(sender: Flask, event: Any, **extra: Any) -> None:
        if not healed.exists():
            raise RuntimeError("not yet")
        dispatched.extend(event.msg_keys)

    app = make_app(store=forgetful.url, journal=True, lease_seconds=0.2)
    messages_recalled.connect(picky, app, weak=False)
    client = app.test_client()
    assert post_callback(client, app, msg_keys=["m-1", "m-2"]).status_code == 200
    assert post_callback(client, app, msg_keys=["m-3"]).status_code == 200
    store = guarded(app)
    assert store.journal is not None
    assert {e.state for e in store.journal.entries()} == {"failed"}
    assert len(store.journal.entries()) == 2
    # journal "OK" in check; durability OK as the journal covers it
    assert findings(app, "durability")[0][0] == "OK"
    assert findings(app, "journal") == [
        ("OK", f"{store.journal.path}: 2 unfinished deliveries kept on this host")
    ]

    restart(forgetful)
    assert store.deliveries() == []  # the store forgot them
    healed.touch()
    # A new process (the CLI) notices from the journal's marker, and replay brings them back.
    fresh = make_app(store=forgetful.url, journal=True, lease_seconds=0.2)
    messages_recalled.connect(picky, fresh, weak=False)
    with caplog.at_level(logging.ERROR, logger="flask_oa_recall"):
        result = fresh.test_cli_runner().invoke(args=["oa-recall", "replay", "--failed"])
    assert result.exit_code == 0, result.output
    assert "Brought back 2 deliveries the store had lost" in result.output
    assert "Replayed 2: 2 finished, 0 not." in result.output
    assert sorted(dispatched) == ["m-1", "m-2", "m-3"]
    assert any("forgot" in r.message and "journal holds 2" in r.message for r in caplog.records)
    kept = guarded(fresh).deliveries()
    assert {d.status for d in kept} == {"done"}
    assert store.journal.entries() == []
    assert findings(fresh, "journal")[0][1].endswith(": 0 unfinished deliveries kept on this host")
    get_state(app).close()
    get_state(fresh).close()


def test_restore_leaves_in_flight_entries_and_drops_finished_ones(
    make_app: AppFactory, forgetful: PrivateRedis
) -> None:
    app = make_app(store=forgetful.url, journal=True, lease_seconds=60)
    store = guarded(app)
    assert store.journal is not None
    client = app.test_client()
    assert post_callback(client, app, msg_keys=["fine"]).status_code == 200
    assert store.journal.entries() == []  # done: dropped at once
    from flask_oa_recall.store import NewDelivery

    (done,) = store.deliveries()
    store.journal.add(done)  # as if the drop had been missed: the store has it finished
    store.journal.add(NewDelivery("in-flight", time.time(), SDK_APP_ID, "X", {}, "{}"))
    restored = store.restore(lease_seconds=60)
    assert (restored.brought_back, restored.dropped, restored.in_flight) == ([], 1, 1)
    restored = store.restore(lease_seconds=0)
    assert restored.brought_back == ["in-flight"]
    kept = store.get("in-flight")
    assert kept is not None
    assert (kept.status, kept.last_error) == ("failed", RESTORED_ERROR)
    restored = store.restore(lease_seconds=0)  # the store has it again, failed: left alone
    assert (restored.brought_back, restored.dropped) == ([], 0)
    assert [e.delivery.id for e in store.journal.entries()] == ["in-flight"]
    get_state(app).close()


class FakeRedis:
    """Just enough of a Marked store for :func:`warn_if_forgetful`."""

    def __init__(self, url: str, keeps: bool | None) -> None:
        self.url = url
        self.keeps = keeps

    def persistence(self) -> Persistence:
        return Persistence(self.keeps, "as the test says")

    def marker(self) -> durability.Marker:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("keeps", "journal", "says"),
    [
        (False, False, "would be LOST"),
        (False, True, "OA_RECALL_JOURNAL is on"),
        (True, False, None),
        (None, False, None),
    ],
    ids=["forgets", "forgets-journalled", "keeps", "unknown"],
)
def test_the_start_up_warning_says_what_is_at_risk_once_per_store(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    keeps: bool | None,
    journal: bool,
    says: str | None,
) -> None:
    monkeypatch.setattr(durability, "_warned", set())
    store = FakeRedis("redis://example.invalid:6379/0", keeps)
    with caplog.at_level(logging.WARNING, logger="flask_oa_recall"):
        durability.warn_if_forgetful(store, journal=journal)
        durability.warn_if_forgetful(store, journal=journal)
    messages = [r.message for r in caplog.records]
    if says is None:
        assert messages == []
    else:
        assert len(messages) == 1
        assert says in messages[0]
        assert "redis://example.invalid:6379/0" in messages[0]


def test_the_wrapper_passes_everything_else_to_the_store(
    make_app: AppFactory, tmp_path: Path
) -> None:
    from flask_oa_recall.guarded import unwrap

    app = make_app(store="memory://", journal="journals/j.sqlite3")
    store = guarded(app)
    assert store.watch is None  # memory:// holds no marker; only the journal wraps it
    assert store.journal is not None
    assert store.journal.path == str(tmp_path / "instance" / "journals" / "j.sqlite3")
    assert "journal=" in repr(store)
    inner = unwrap(store)
    assert unwrap(inner) is inner
    assert store.layout_version == inner.layout_version
    assert store.stored_layout_version() == inner.stored_layout_version()
    store.ping()
    assert store.prune(before=time.time()) == 0
    assert GuardedStore(inner).restore(lease_seconds=1).brought_back == []
    get_state(app).close()


def test_a_delivery_the_store_could_not_keep_leaves_the_journal(
    make_app: AppFactory, forgetful: PrivateRedis, check_always: None
) -> None:
    app = make_app(store=forgetful.url, journal=True)
    store = guarded(app)
    assert store.journal is not None
    forgetful.stop()
    response = post_callback(app.test_client(), app, msg_keys=["while-down"])
    assert (response.status_code, json.loads(response.data)) == (200, OK)
    assert store.journal.entries() == []
    forgetful.start()
    get_state(app).close()


@pytest.fixture
def broken_journal(tmp_path: Path) -> Path:
    """A journal file whose tables are views, so that every read and write of them fails."""
    import sqlite3

    path = tmp_path / "instance" / "broken.sqlite3"
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE VIEW journal AS SELECT 1 AS x; CREATE VIEW markers AS SELECT 1 AS x;"
    )
    conn.close()
    return path


def test_a_broken_journal_is_reported_and_never_fails_a_callback(
    make_app: AppFactory,
    forgetful: PrivateRedis,
    broken_journal: Path,
    check_always: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[dict[str, Any]] = []

    def on_forgot(sender: Flask, **kwargs: Any) -> None:
        heard.append(kwargs)
        raise RuntimeError("the pager is down")

    with caplog.at_level(logging.ERROR, logger="flask_oa_recall"):
        app = make_app(store=forgetful.url, journal=str(broken_journal))
        client = app.test_client()
        assert post_callback(client, app, msg_keys=["k"]).status_code == 200
        restart(forgetful)
        with store_forgot.connected_to(on_forgot, app):
            assert post_callback(client, app, msg_keys=["k2"]).status_code == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "could not be read" in text  # the remembered marker, at start-up
    assert "could not be remembered" in text
    assert "the journal could not keep delivery" in text
    assert "a receiver of store_forgot raised; ignored" in text
    assert [h["journalled"] for h in heard] == [None]
    ((level, message),) = findings(app, "journal")
    assert level == "FAIL"
    assert "could not be read" in message
    get_state(app).close()


def test_a_journal_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    from flask_oa_recall import StoreError
    from flask_oa_recall.journal import Journal

    (tmp_path / "a-folder").mkdir()
    with pytest.raises(StoreError, match="cannot be opened"):
        Journal(str(tmp_path / "a-folder"), "memory://")


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "must be True, False or the journal file's path"), ("", "must be True")],
    ids=["number", "empty-path"],
)
def test_a_bad_journal_setting_is_refused_at_start_up(
    make_app: AppFactory, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_app(journal=value)


# --- a bounded run under gunicorn, with a restart in the middle -------------------------------

APP = "tests.hardening_apps.faulty:create_app()"
CALLBACKS = 300
RESTART_AFTER = CALLBACKS // 3  # before each worker's first look at the marker (5 s)
BOOM_EVERY = 8


def _post(port: int, keys: list[str]) -> tuple[int, dict[str, Any]] | str:
    import http.client

    from flask_oa_recall.testing import recall_body, signed_query

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        url = f"/tencent-im/callback?{signed_query(sdk_app_id=SDK_APP_ID, token=TOKEN)}"
        conn.request("POST", url, body=json.dumps(recall_body(keys)).encode())
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    except OSError as err:
        return type(err).__name__
    finally:
        conn.close()


@pytest.mark.e2e
@pytest.mark.parametrize("journal", [False, True], ids=["no-journal", "journal"])
def test_a_restart_mid_run_loses_failed_deliveries_only_without_the_journal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    journal: bool,
) -> None:
    _need_redis_server()
    for name in list(os.environ):
        if name.startswith(("OA_RECALL_", "OA_TEST_")):
            monkeypatch.delenv(name)
    record = tmp_path / "record.txt"
    env = {
        "OA_TEST_RECORD": str(record),
        "OA_TEST_INSTANCE": str(tmp_path / "instance"),
        "OA_TEST_HEAL": str(tmp_path / "healed"),
        "OA_RECALL_LEASE_SECONDS": "1",
        "OA_RECALL_JOURNAL": "true" if journal else "false",
    }
    keys = [f"boom-{i:04d}" if i % BOOM_EVERY == 3 else f"m{i:04d}" for i in range(CALLBACKS)]
    answers: dict[str, tuple[int, dict[str, Any]] | str] = {}
    with private_redis(tmp_path / "redis", persistent=False) as server:
        env["OA_RECALL_STORE"] = server.url
        with gunicorn_server(APP, tmp_path, env=env, workers=2) as app_server:
            sent = threading.Event()
            lock = threading.Lock()

            def send(key: str) -> None:
                answer = _post(app_server.port, [key])
                with lock:
                    answers[key] = answer
                    if len(answers) == RESTART_AFTER:
                        sent.set()
                time.sleep(0.09)

            with ThreadPoolExecutor(4) as pool:
                done = pool.map(send, keys)
                wait_for(sent.is_set, timeout=60, what="a third of the callbacks")
                failed_before = Counter(r for w, r, _, k in read_record(record) if w == "fail")
                server.stop()
                server.start()  # empty: it kept nothing
                list(done)
            (tmp_path / "healed").touch()
            # Tencent (retry on) sends again what was answered 503.
            for key in [k for k, a in answers.items() if isinstance(a, tuple) and a[0] == 503]:
                answers[key] = _post(app_server.port, [key])
            log = app_server.log()
        time.sleep(1.5)  # leases run out
        replay = run_flask(
            APP,
            "oa-recall",
            "replay",
            "--failed",
            "--pending",
            env={**env, "OA_RECALL_STORE": server.url},
        )

    picky_done = Counter(k for w, r, _, k in read_record(record) if (w, r) == ("done", "picky"))
    mirror_done = Counter(k for w, r, _, k in read_record(record) if (w, r) == ("done", "mirror"))
    accepted = [k for k, a in answers.items() if isinstance(a, tuple) and a == (200, OK)]
    lost = sorted(k for k in accepted if not picky_done[k] or not mirror_done[k])
    replayed = replay.stdout.strip().splitlines()[-1] if replay.stdout.strip() else "-"
    with capsys.disabled():
        print(
            f"\n== store that forgets, journal {'on' if journal else 'off'}: {CALLBACKS}"
            f" callbacks, Redis restarted after {RESTART_AFTER} answers"
            f" ({failed_before['picky']} picky failures before it);"
            f" accepted {len(accepted)}; replay: {replayed};"
            f" lost {len(lost)}"
        )

    assert len(accepted) == CALLBACKS, {k: a for k, a in answers.items() if a != (200, OK)}
    assert "The delivery store forgot" in log + replay.stderr
    if journal:
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "Brought back" in replay.stdout
        assert lost == []
    else:
        # What failed before the restart was kept only in Redis, and Redis forgot it.
        assert failed_before["picky"] > 0
        assert lost
        assert all(k.startswith("boom-") for k in lost)
