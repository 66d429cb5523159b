"""When the store fails, recalls still reach the receivers; when it comes back, so does dedup.

Three real outages, each with a way back:

- ``redis``: a private ``redis-server`` of this test's own (never the machine's shared one) is
  stopped, then started again on the same port (empty: it runs without persistence);
- ``postgres``: a private PostgreSQL cluster of this module's own (``initdb`` in a temporary
  directory, never the machine's shared server) is stopped (fast shutdown: every connection is
  cut), then started again on the same port with what it kept;
- ``sqlite-read-only``: the SQLite file turns read-only, then writable again;
- ``sqlite-no-directory``: the SQLite file's directory is replaced by a regular file, so the
  database can neither be opened nor created, then the directory may be created again.

How the SQLite file is made read-only: the tests run as root, and root ignores file modes, so
``chmod 444`` would prove nothing. Byte 18 of a SQLite header is the file format *write*
version; every SQLite opens a file whose write version is above 2 read-only
(https://sqlite.org/fileformat.html, section 1.3.3). Writes then fail with SQLITE_READONLY,
"attempt to write a readonly database", just as they do for a non-root user on a ``chmod 444``
file, on any filesystem and without privileges (no bind mount, no ``chattr``), and writing 2
back undoes it. The store's open connection is closed first, as a worker restart or a failed
statement would, because SQLite reads the header when it opens the file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_oa_recall import StoreError, messages_recalled, receiver_failed, store_failed
from flask_oa_recall.state import get_state
from flask_oa_recall.store import Store
from flask_oa_recall.testing import capture_recalls, post_callback

from .conftest import AppFactory
from .private_postgres import PrivatePostgres, postgres_binaries
from .servers import wait_for

OK = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
START_SECONDS = 10.0
STOP_SECONDS = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PrivateRedis:
    """A ``redis-server`` of one test's own on 127.0.0.1, without persistence."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait, at most START_SECONDS, until it answers PING."""
        import redis

        assert self.process is None
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                self.process = None
                log_text = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited at start:\n{log_text[-2000:]}")
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            finally:
                client.close()
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {START_SECONDS} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL), waiting at most STOP_SECONDS for each."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A running private ``redis-server``; always stopped afterwards."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs redis-server on PATH")
        pytest.skip("redis-server is not installed")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster for this module, removed afterwards."""
    binaries = postgres_binaries()
    if binaries is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs PostgreSQL's initdb and pg_ctl")
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    cluster = PrivatePostgres(binaries)
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def private_postgres(postgres_cluster: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private cluster, running; stopped after the test. Each test keeps its tables in a
    schema of its own."""
    postgres_cluster.start()
    try:
        yield postgres_cluster
    finally:
        postgres_cluster.stop()


def _set_write_version(path: Path, version: int) -> None:
    with path.open("r+b") as file:
        file.seek(18)
        file.write(bytes([version]))


class Outage:
    """A store that can be broken and repaired for real."""

    def __init__(self, store_url: str, break_: Callable[[Store], None], repair: Callable[[], None]):
        self.store_url = store_url
        self._break = break_
        self._repair = repair

    def break_(self, store: Store) -> None:
        self._break(store)

    def repair(self) -> None:
        self._repair()


@pytest.fixture(
    params=[
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("sqlite-read-only", id="sqlite-read-only"),
        pytest.param("sqlite-no-directory", id="sqlite-no-directory"),
    ]
)
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Outage:
    """How to break, and then repair, each kind of store."""
    if request.param == "redis":
        server: PrivateRedis = request.getfixturevalue("private_redis")
        return Outage(server.url, lambda store: server.stop(), server.start)
    if request.param == "postgres":
        cluster: PrivatePostgres = request.getfixturevalue("private_postgres")
        url = f"{cluster.url}?schema=outage_{uuid.uuid4().hex[:8]}"
        return Outage(url, lambda store: cluster.stop(), cluster.start)
    directory = tmp_path / "deliveries"
    path = directory / "store.sqlite3"
    if request.param == "sqlite-read-only":

        def make_read_only(store: Store) -> None:
            store.ping()  # the file exists
            store.close()
            _set_write_version(path, 3)

        return Outage(f"sqlite:///{path}", make_read_only, lambda: _set_write_version(path, 2))

    def replace_directory(store: Store) -> None:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)
        directory.write_text("a regular file where the store's directory should be")

    return Outage(f"sqlite:///{path}", replace_directory, lambda: directory.unlink())


@pytest.fixture
def outage_app(make_app: AppFactory, outage: Outage) -> Iterator[Flask]:
    """An app whose store is the one ``outage`` breaks; its connections are closed after."""
    app = make_app(store=outage.store_url)
    yield app
    get_state(app).close()


def app_store(app: Flask) -> Store:
    state = get_state(app)
    return state.store(state.settings(app.config))


class Recorder:
    """What ``store_failed`` and ``receiver_failed`` reported."""

    def __init__(self) -> None:
        self.store_failed: list[dict[str, Any]] = []
        self.receiver_failed: list[dict[str, Any]] = []

    def on_store_failed(self, sender: Flask, **kwargs: Any) -> None:
        self.store_failed.append(kwargs)

    def on_receiver_failed(self, sender: Flask, **kwargs: Any) -> None:
        self.receiver_failed.append(kwargs)


@pytest.fixture
def recorder(outage_app: Flask) -> Iterator[Recorder]:
    found = Recorder()
    with (
        store_failed.connected_to(found.on_store_failed, outage_app),
        receiver_failed.connected_to(found.on_receiver_failed, outage_app),
    ):
        yield found


def _errors(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name == "flask_oa_recall.delivery" and text in r.message
    ]


def test_recalls_reach_the_receivers_and_are_acknowledged_while_the_store_is_down(
    outage_app: Flask,
    outage: Outage,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = outage_app.test_client()
    outage.break_(app_store(outage_app))
    with (
        caplog.at_level(logging.ERROR, logger="flask_oa_recall"),
        capture_recalls(outage_app) as events,
    ):
        response = post_callback(client, outage_app, msg_keys=["down-1", "down-2"])
    assert response.status_code == 200
    assert json.loads(response.data) == OK
    assert [e.msg_keys for e in events] == [("down-1", "down-2")]
    assert len(recorder.store_failed) == 1
    failure = recorder.store_failed[0]
    assert isinstance(failure["exception"], StoreError)
    assert failure["delivery_id"] == events[0].delivery_id
    records = _errors(caplog, "could not be kept")
    assert len(records) == 1
    assert failure["delivery_id"] in records[0].message


def test_a_failing_receiver_while_the_store_is_down_is_answered_503_so_tencent_may_retry(
    outage_app: Flask,
    outage: Outage,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = outage_app.test_client()
    ran: list[tuple[str, ...]] = []

    def mirror(sender: Flask, event: Any, **extra: Any) -> None:
        raise RuntimeError("the mirror database is down too")

    def search_index(sender: Flask, event: Any, **extra: Any) -> None:
        ran.append(event.msg_keys)

    outage.break_(app_store(outage_app))
    with (
        caplog.at_level(logging.ERROR, logger="flask_oa_recall"),
        messages_recalled.connected_to(mirror, outage_app),
        messages_recalled.connected_to(search_index, outage_app),
    ):
        response = post_callback(client, outage_app, msg_keys=["down-3"])
    assert response.status_code == 503
    envelope = json.loads(response.data)
    assert envelope["ActionStatus"] == "FAIL"
    assert envelope["ErrorCode"] == 50301
    assert "could not be kept" in envelope["ErrorInfo"]
    assert ran == [("down-3",)]  # the other receiver still ran
    assert [f["receiver"].rsplit(".", 1)[-1] for f in recorder.receiver_failed] == ["mirror"]
    assert len(recorder.store_failed) == 1
    assert isinstance(recorder.store_failed[0]["exception"], StoreError)
    assert len(_errors(caplog, "could not be kept")) == 1


def test_the_app_keeps_and_deduplicates_deliveries_again_once_the_store_is_back(
    outage_app: Flask, outage: Outage, recorder: Recorder
) -> None:
    client = outage_app.test_client()
    store = app_store(outage_app)
    outage.break_(store)
    with capture_recalls(outage_app) as events:
        assert post_callback(client, outage_app, msg_keys=["while-down"]).status_code == 200
    unkept = events[0].delivery_id
    assert len(recorder.store_failed) == 1

    outage.repair()
    with capture_recalls(outage_app) as events:
        first = post_callback(client, outage_app, msg_keys=["after-repair"])
        again = post_callback(client, outage_app, msg_keys=["after-repair"])
    assert (first.status_code, json.loads(first.data)) == (200, OK)
    assert (again.status_code, json.loads(again.data)) == (200, OK)
    assert [e.msg_keys for e in events] == [("after-repair",)]  # the redelivery was not dispatched
    assert len(recorder.store_failed) == 1  # nothing failed after the repair
    assert store.get(unkept) is None
    statuses = [d.status for d in store.deliveries()]
    assert statuses[:2] == ["duplicate", "done"]
    store.ping()


def test_a_store_lost_during_dispatch_still_answers_ok_and_reports_it(
    outage_app: Flask,
    outage: Outage,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = outage_app.test_client()
    store = app_store(outage_app)
    store.ping()

    def breaks_the_store(sender: Flask, event: Any, **extra: Any) -> None:
        outage.break_(store)

    with (
        caplog.at_level(logging.ERROR, logger="flask_oa_recall"),
        messages_recalled.connected_to(breaks_the_store, outage_app),
        capture_recalls(outage_app) as events,
    ):
        response = post_callback(client, outage_app, msg_keys=["mid-dispatch"])
        # SQLite records a live outcome with its next write: its failure is reported then.
        wait_for(lambda: recorder.store_failed, what="store_failed", timeout=5)
    assert (response.status_code, json.loads(response.data)) == (200, OK)
    assert [e.msg_keys for e in events] == [("mid-dispatch",)]
    assert [f["delivery_id"] for f in recorder.store_failed] == [events[0].delivery_id]
    assert len(_errors(caplog, "it stays pending")) == 1
    outage.repair()
    assert post_callback(client, outage_app, msg_keys=["next"]).status_code == 200
    assert len(recorder.store_failed) == 1
