"""A process dying at each point of the SQLite store's work leaves what docs/failure-modes says.

Each case runs the store in a child process that exits on the spot (``os._exit``, no clean-up,
as a SIGKILL would) when it is about to run a given statement; the parent then opens the same
file and checks what is kept.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from flask_oa_recall.store import DeliveryStatus, NewDelivery, Outcome, SQLiteStore, grouped

A = "messages_recalled:host.on_recall"
LEASE = 60.0


class _DyingConnection:
    """A sqlite3 connection that kills the process before the ``nth`` statement starting with
    ``prefix`` (a COMMIT, say) reaches SQLite."""

    def __init__(self, conn: sqlite3.Connection, prefix: str, nth: int) -> None:
        self._conn = conn
        self._prefix = prefix
        self._left = nth

    def _maybe_die(self, sql: str) -> None:
        if sql.lstrip().upper().startswith(self._prefix):
            self._left -= 1
            if self._left == 0:
                os._exit(17)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._maybe_die(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._maybe_die(sql)
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def delivery(delivery_id: str, *keys: str) -> NewDelivery:
    return NewDelivery(
        id=delivery_id,
        received_at=time.time(),
        sdk_app_id=1400000000,
        command="OfficialAccount.CallbackAfterMsgWithDraw",
        query={"SdkAppid": "1400000000"},
        body="{}",
        official_account="@TOA#_crash",
        msg_keys=keys,
    )


def _child(path: str, prefix: str, nth: int, steps: str) -> None:
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        return _DyingConnection(real_connect(*args, **kwargs), prefix, nth)

    sqlite3.connect = connect  # type: ignore[assignment]
    if "wait" not in steps:
        grouped.GROUP_SECONDS = 3600.0  # only the next keep, or close, records an outcome
    immediate = "immediate" in steps
    store = SQLiteStore(path, group_outcomes=not immediate)
    kept = delivery("d1", "k1", "k2")
    if "begin" in steps:
        claim = store.begin(kept, LEASE)
        if "finish" in steps:
            (store.finish if immediate else store.finish_soon)(
                "d1",
                claim,
                Outcome(
                    status=DeliveryStatus.DONE,
                    receivers={A: "ok"},
                    succeeded=dict.fromkeys(claim.owned, frozenset({A})),
                ),
            )
        if "wait" in steps:  # long enough for the store's thread to record the outcome
            time.sleep(grouped.GROUP_SECONDS * 25)
        if "next" in steps:  # the next callback's keep, which records the outcome with it
            store.begin(delivery("d3", "k3"), LEASE)
        if "close" in steps:
            store.close()
    else:
        store.deliveries()  # only opens (and migrates) the file
    os._exit(0)  # as a SIGKILL would: no clean-up, no exit handlers


def run_child(path: Path, prefix: str, nth: int, steps: str) -> int:
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(target=_child, args=(str(path), prefix, nth, steps))
    process.start()
    process.join(timeout=60)
    assert process.exitcode is not None
    return process.exitcode


def test_dying_inside_begin_keeps_nothing_and_claims_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    SQLiteStore(str(path)).ping()
    assert run_child(path, "COMMIT", 1, "begin") == 17
    store = SQLiteStore(str(path))
    assert store.get("d1") is None
    # The sender got no answer and sends again: the retry owns every message at once.
    assert set(store.begin(delivery("d2", "k1", "k2"), LEASE).owned) == {"k1", "k2"}


def test_dying_after_begin_leaves_a_pending_delivery_that_replay_finishes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    SQLiteStore(str(path)).ping()
    assert run_child(path, "BEGIN", 2, "begin finish immediate") == 17  # before finish starts
    store = SQLiteStore(str(path))
    kept = store.get("d1")
    assert kept is not None
    assert kept.status == DeliveryStatus.PENDING
    # A retry while the dead worker's lease runs is acknowledged, not dispatched.
    assert store.begin(delivery("d2", "k1", "k2"), LEASE).busy == ("k1", "k2")
    _expire(path)
    again, claim = store.resume("d1", LEASE)
    assert again.attempts == 2
    assert set(claim.owned) == {"k1", "k2"}


@pytest.mark.parametrize(
    ("prefix", "nth"),
    [("UPDATE OA_RECALL_DELIVERIES", 1), ("COMMIT", 2)],
    ids=["after-releasing-messages", "before-commit"],
)
def test_dying_inside_finish_keeps_the_delivery_pending_with_nothing_released(
    tmp_path: Path, prefix: str, nth: int
) -> None:
    path = tmp_path / "s.sqlite3"
    SQLiteStore(str(path)).ping()
    assert run_child(path, prefix, nth, "begin finish immediate") == 17
    store = SQLiteStore(str(path))
    kept = store.get("d1")
    assert kept is not None
    assert kept.status == DeliveryStatus.PENDING
    assert kept.receivers == {}
    _expire(path)
    # The receivers ran but nothing says so: replay runs them again (at least once).
    _, claim = store.resume("d1", LEASE)
    assert claim.owned == {"k1": frozenset(), "k2": frozenset()}


@pytest.mark.parametrize(
    "steps",
    ["begin finish immediate", "begin finish next", "begin finish wait", "begin finish close"],
    ids=["own-transaction", "with-the-next-keep", "by-the-thread", "at-close"],
)
def test_a_finished_delivery_is_final(tmp_path: Path, steps: str) -> None:
    path = tmp_path / "s.sqlite3"
    assert run_child(path, "NO SUCH STATEMENT", 1, steps) == 0
    store = SQLiteStore(str(path))
    kept = store.get("d1")
    assert kept is not None
    assert kept.status == DeliveryStatus.DONE
    assert store.begin(delivery("d2", "k1", "k2"), LEASE).done == ("k1", "k2")


def test_dying_before_a_held_back_outcome_is_recorded_keeps_the_delivery_pending(
    tmp_path: Path,
) -> None:
    # The answer went out, the outcome waits for the next keep, and the process is killed.
    path = tmp_path / "s.sqlite3"
    SQLiteStore(str(path)).ping()
    assert run_child(path, "NO SUCH STATEMENT", 1, "begin finish") == 0
    store = SQLiteStore(str(path))
    kept = store.get("d1")
    assert kept is not None
    assert kept.status == DeliveryStatus.PENDING
    assert kept.receivers == {}
    _expire(path)
    _, claim = store.resume("d1", LEASE)
    assert claim.owned == {"k1": frozenset(), "k2": frozenset()}


def test_dying_inside_the_next_keep_loses_it_and_the_outcome_it_carried(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    SQLiteStore(str(path)).ping()
    # d1's keep and d3's keep: dies at d3's COMMIT, which also carried d1's outcome.
    assert run_child(path, "COMMIT", 2, "begin finish next") == 17
    store = SQLiteStore(str(path))
    assert store.get("d3") is None
    kept = store.get("d1")
    assert kept is not None
    assert kept.status == DeliveryStatus.PENDING
    assert kept.receivers == {}


def test_dying_during_the_layout_migration_leaves_layout_1_whole(tmp_path: Path) -> None:
    from tests.test_store_layout import make_layout_1

    path = tmp_path / "old.sqlite3"
    ids = make_layout_1(path)
    assert run_child(path, "ALTER TABLE", 1, "open") == 17  # after the copy and the drop
    conn = sqlite3.connect(path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "oa_recall_deliveries_status" in names  # layout 1, untouched
    assert "oa_recall_deliveries_v2" not in names
    store = SQLiteStore(str(path))
    assert store.stored_layout_version() == 1
    assert {d.id for d in store.deliveries()} == set(ids.values())  # migrated now
    assert store.stored_layout_version() == 2


def _expire(path: Path) -> None:
    """Let every lease run out (as if the lease time had passed)."""
    conn = sqlite3.connect(path)
    conn.execute("UPDATE oa_recall_deliveries SET lease_until = 0")
    conn.execute("UPDATE oa_recall_messages SET lease_until = 0")
    conn.commit()
    conn.close()
