"""WAL checkpoints of the SQLite store run in a thread of the process (store/checkpoint.py).

What must hold: a checkpoint is asked for every ``EVERY_COMMITS`` commits and runs in the
checkpointer's thread, never in the committing one; one that fails is logged and the next one
runs; the store's connections leave checkpoints below ``BACKSTOP_PAGES`` to it; a forked child
starts a thread of its own; ``background_checkpoints=False`` leaves SQLite's default alone.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from flask_oa_recall.store import SQLiteStore, checkpoint

from .servers import wait_for
from .test_store_crash_points import delivery
from .test_store_grouped import done

LEASE = 60.0


class Calls:
    """Each checkpoint the checkpointer ran, by the name of the thread it ran in."""

    def __init__(self, fail_first: int = 0) -> None:
        self.threads: list[str] = []
        self._fail_first = fail_first
        self.ran = threading.Event()

    def __call__(self) -> None:
        self.threads.append(threading.current_thread().name)
        self.ran.set()
        if len(self.threads) <= self._fail_first:
            raise sqlite3.OperationalError("database is locked")


def test_a_checkpoint_runs_in_its_own_thread_after_every_commits() -> None:
    calls = Calls()
    checkpointer = checkpoint.Checkpointer(calls)
    for _ in range(checkpoint.EVERY_COMMITS - 1):
        checkpointer.committed()
    assert not calls.ran.wait(0.2)
    checkpointer.committed()
    assert calls.ran.wait(5)
    assert calls.threads == ["oa-recall-checkpoint"]


def test_a_failed_checkpoint_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls(fail_first=1)
    checkpointer = checkpoint.Checkpointer(calls)
    with caplog.at_level(logging.DEBUG, logger="flask_oa_recall.store.checkpoint"):
        for _ in range(checkpoint.EVERY_COMMITS):
            checkpointer.committed()
        wait_for(lambda: len(calls.threads) == 1, timeout=5)
        wait_for(lambda: caplog.records, timeout=5, what="the failure logged")
        calls.ran.clear()
        for _ in range(checkpoint.EVERY_COMMITS):
            checkpointer.committed()
        assert calls.ran.wait(5)
    assert len(calls.threads) == 2
    assert "database is locked" in caplog.records[0].getMessage()


def test_the_thread_ends_when_idle_and_a_new_one_starts_with_the_next_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checkpoint, "IDLE_SECONDS", 0.05)
    calls = Calls()
    checkpointer = checkpoint.Checkpointer(calls)
    for _ in range(checkpoint.EVERY_COMMITS):
        checkpointer.committed()
    assert calls.ran.wait(5)
    wait_for(lambda: checkpointer._thread is None, timeout=5, what="the idle thread to end")
    calls.ran.clear()
    for _ in range(checkpoint.EVERY_COMMITS):
        checkpointer.committed()
    assert calls.ran.wait(5)
    assert len(calls.threads) == 2


def test_a_forked_child_checkpoints_in_a_thread_of_its_own() -> None:
    calls = Calls()
    checkpointer = checkpoint.Checkpointer(calls)
    for _ in range(checkpoint.EVERY_COMMITS):
        checkpointer.committed()
    assert calls.ran.wait(5)  # the parent's thread is running (waiting for more)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        calls.ran.clear()
        for _ in range(checkpoint.EVERY_COMMITS):
            checkpointer.committed()
        os._exit(0 if calls.ran.wait(5) else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_store_checkpoints_the_wal_from_its_thread_not_in_a_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "checkpointed.sqlite3")
    store = SQLiteStore(path, group_outcomes=False)
    ran_in: list[str] = []
    real = store._checkpoint

    def watched() -> None:
        ran_in.append(threading.current_thread().name)
        real()

    monkeypatch.setattr(store, "_checkpoint", watched)
    try:
        conn = store._connect()
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == checkpoint.BACKSTOP_PAGES
        for n in range(checkpoint.EVERY_COMMITS // 2):  # a keep and an outcome: two commits
            kept = delivery(f"d{n}", f"{n}_1_1700000000")
            store.finish(kept.id, store.begin(kept, LEASE), done(kept.msg_keys))
        wait_for(lambda: ran_in, timeout=5, what="a checkpoint")
        assert set(ran_in) == {"oa-recall-checkpoint"}
        # A passive checkpoint copied the WAL back: the next writer starts it over.
        backfilled = sqlite3.connect(path).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert backfilled[1] == backfilled[2]
    finally:
        store.close()


def test_without_background_checkpoints_sqlite_checkpoints_as_usual(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "plain.sqlite3"), background_checkpoints=False)
    try:
        assert store._connect().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        kept = delivery("d1", "1_1_1700000000")
        store.finish(kept.id, store.begin(kept, LEASE), done(kept.msg_keys))
        assert store._checkpointer is None
    finally:
        store.close()
