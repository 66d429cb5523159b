"""The SQLite store records a live callback's outcome with its next write (store/grouped.py).

What must hold: this process reads its own outcomes at once; another process sees them with the
next keep or within about ``GROUP_SECONDS``; a failure to record one is reported once and tried
again; a forked child never writes its parent's; ``finish`` (replay) records at once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from flask_oa_recall import StoreError
from flask_oa_recall.store import DeliveryStatus, Outcome, SQLiteStore, grouped

from .servers import wait_for
from .test_store_crash_points import delivery
from .test_store_outage import _set_write_version

A = "messages_recalled:host.on_recall"
LEASE = 60.0


def done(keys: tuple[str, ...] | list[str]) -> Outcome:
    return Outcome(
        status=DeliveryStatus.DONE,
        receivers={A: "ok"},
        succeeded=dict.fromkeys(keys, frozenset({A})),
    )


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "grouped.sqlite3")


@pytest.fixture
def slow_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread waits long enough that only the next keep can record an outcome."""
    monkeypatch.setattr(grouped, "GROUP_SECONDS", 30.0)


def status_elsewhere(path: str, delivery_id: str) -> str | None:
    """The status another process would read (a store of its own on the same file)."""
    other = SQLiteStore(path, group_outcomes=False)
    try:
        kept = other.get(delivery_id)
        return None if kept is None else kept.status
    finally:
        other.close()


@pytest.mark.usefixtures("slow_thread")
def test_the_next_keep_records_a_held_outcome_in_its_own_transaction(path: str) -> None:
    store = SQLiteStore(path)
    claim = store.begin(delivery("d1", "k1"), LEASE)
    store.finish_soon("d1", claim, done(["k1"]))
    assert status_elsewhere(path, "d1") == DeliveryStatus.PENDING

    assert store.begin(delivery("d2", "k1", "k2"), LEASE).done == ("k1",)
    assert status_elsewhere(path, "d1") == DeliveryStatus.DONE
    store.close()


@pytest.mark.usefixtures("slow_thread")
def test_this_process_reads_its_held_outcomes_at_once(path: str) -> None:
    store = SQLiteStore(path)
    claim = store.begin(delivery("d1", "k1"), LEASE)
    store.finish_soon("d1", claim, done(["k1"]))
    kept = store.get("d1")
    assert kept is not None
    assert (kept.status, dict(kept.receivers)) == (DeliveryStatus.DONE, {A: "ok"})
    store.close()


def test_the_thread_records_a_held_outcome_when_no_callback_follows(path: str) -> None:
    store = SQLiteStore(path)
    claim = store.begin(delivery("d1", "k1"), LEASE)
    store.finish_soon("d1", claim, done(["k1"]))
    wait_for(
        lambda: status_elsewhere(path, "d1") == DeliveryStatus.DONE,
        timeout=5,
        what="the thread to record the outcome",
    )
    store.close()


@pytest.mark.usefixtures("slow_thread")
def test_finish_records_at_once_with_what_was_held(path: str) -> None:
    # Replay uses finish: it must know the outcome is recorded before it reports.
    store = SQLiteStore(path)
    first = store.begin(delivery("d1", "k1"), LEASE)
    store.finish_soon("d1", first, done(["k1"]))
    second = store.begin(delivery("d2", "k2"), LEASE)
    store.finish_soon("d2", second, done(["k2"]))
    third = store.begin(delivery("d3", "k3"), LEASE)
    store.finish("d3", third, done(["k3"]))
    assert [status_elsewhere(path, d) for d in ("d1", "d2", "d3")] == ["done"] * 3
    store.close()


def test_an_outcome_that_cannot_be_recorded_is_reported_once_and_recorded_later(
    path: str,
) -> None:
    store = SQLiteStore(path)
    claim = store.begin(delivery("d1", "k1"), LEASE)
    errors: list[StoreError] = []
    store.close()  # SQLite reads the header when it opens the file
    _set_write_version(Path(path), 3)  # read-only for every SQLite, root included
    try:
        store.finish_soon("d1", claim, done(["k1"]), errors.append)
        wait_for(lambda: errors, timeout=5, what="the failure to be reported")
        assert "readonly" in str(errors[0])
    finally:
        _set_write_version(Path(path), 2)
    # Tried again (every RETRY_SECONDS) once the file can be written; reported only once.
    wait_for(
        lambda: status_elsewhere(path, "d1") == DeliveryStatus.DONE,
        timeout=10,
        what="the retry to record the outcome",
    )
    assert len(errors) == 1
    store.close()


@pytest.mark.usefixtures("slow_thread")
def test_a_forked_child_does_not_write_its_parents_held_outcomes(path: str) -> None:
    store = SQLiteStore(path)
    claim = store.begin(delivery("d1", "k1"), LEASE)
    store.finish_soon("d1", claim, done(["k1"]))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            store.begin(delivery("c1", "c"), LEASE)
            os._exit(0 if status_elsewhere(path, "d1") == DeliveryStatus.PENDING else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.close()  # the parent records its own
    assert status_elsewhere(path, "d1") == DeliveryStatus.DONE


def test_without_grouping_finish_soon_records_at_once(path: str) -> None:
    store = SQLiteStore(path, group_outcomes=False)
    claim = store.begin(delivery("d1", "k1"), LEASE)
    store.finish_soon("d1", claim, done(["k1"]))
    assert status_elsewhere(path, "d1") == DeliveryStatus.DONE
    store.close()


def test_a_flush_waits_for_the_write_the_thread_has_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At exit the thread may hold outcomes it took but has not written yet: the exit flush
    # must wait for that write instead of finding nothing to do (the thread is a daemon).
    monkeypatch.setattr(grouped, "GROUP_SECONDS", 0.0)
    written: list[list[str]] = []
    writing, release = threading.Event(), threading.Event()

    def write(items: list[str]) -> None:
        if not written:
            writing.set()
            release.wait(5)
        written.append(items)

    pending: grouped.PendingOutcomes[str] = grouped.PendingOutcomes(write, lambda i, e: None)
    pending.add("first")
    assert writing.wait(5)  # the thread took "first" and is writing it
    pending.add("second")
    flusher = threading.Thread(target=pending.flush)
    flusher.start()
    flusher.join(0.2)
    assert flusher.is_alive()  # waiting for the thread's write
    release.set()
    flusher.join(5)
    assert not flusher.is_alive()
    assert written == [["first"], ["second"]]


def test_a_fork_leaves_the_parents_held_outcomes_to_the_parent() -> None:
    held: grouped.PendingOutcomes[str] = grouped.PendingOutcomes(
        lambda items: None, lambda i, e: None
    )
    with held._lock:  # the parent holds one when it forks
        held._items.append("parent's")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os._exit(0 if held.take() == [] else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert held.take() == ["parent's"]


def test_outcomes_a_failed_keep_gave_back_are_retried_and_reported_with_no_new_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The next keep takes the held outcomes and fails (the store is down): it gives them back.
    # The thread must try them again and report them, though no new outcome wakes it.
    monkeypatch.setattr(grouped, "GROUP_SECONDS", 0.0)
    monkeypatch.setattr(grouped, "RETRY_SECONDS", 0.05)
    down = threading.Event()
    down.set()
    written: list[list[str]] = []
    reported: list[tuple[list[str], str]] = []

    def write(items: list[str]) -> None:
        if down.is_set():
            raise StoreError("the store is down")
        written.append(items)

    pending: grouped.PendingOutcomes[str] = grouped.PendingOutcomes(
        write, lambda items, err: reported.append((list(items), str(err)))
    )
    with pending._lock:  # held, with no thread yet (as right after a keep took and failed)
        pending._items.append("taken by a keep")
    pending.give_back(pending.take())
    wait_for(lambda: reported, timeout=5, what="the thread's report")
    assert reported[0] == (["taken by a keep"], "the store is down")
    down.clear()
    wait_for(lambda: written, timeout=5, what="the retried write")
    assert written == [["taken by a keep"]]
