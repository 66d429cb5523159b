"""The Redis store sends a live callback's outcome with its next keep, in one round trip.

What must hold, against the real Redis: another host sees the outcome once the next keep went
(or the thread sent it); this process reads its own outcomes at once; the next keep carries the
held outcomes in the same round trip as its own script; an outcome whose delivery vanished is
logged and the keep still answers; ``group_outcomes=False`` records at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from flask_oa_recall.store import DeliveryStatus, grouped
from flask_oa_recall.store.redis import RedisStore

from .servers import redis_prefixed, wait_for
from .test_store_crash_points import delivery
from .test_store_grouped import done

LEASE = 60.0


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    with redis_prefixed(redis_url, "oa-recall-test-grouped") as prefixed:
        yield prefixed


@pytest.fixture
def slow_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread waits long enough that only the next keep can send an outcome."""
    monkeypatch.setattr(grouped, "GROUP_SECONDS", 30.0)


def status_elsewhere(url: str, delivery_id: str) -> str | None:
    """The status another host would read (a store of its own on the same prefix)."""
    other = RedisStore(url, group_outcomes=False)
    try:
        kept = other.get(delivery_id)
        return None if kept is None else kept.status
    finally:
        other.close()


class RoundTrips:
    """Counts the round trips of a store's links (each ``call`` or ``call_many``)."""

    def __init__(self, store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trips: list[int] = []  # the commands in each
        original = store._link

        def counted() -> Any:
            link = original()
            call, call_many = link.call, link.call_many

            def one(command: Any) -> Any:
                self.trips.append(1)
                return call(command)

            def many(commands: Any) -> Any:
                self.trips.append(len(commands))
                return call_many(commands)

            monkeypatch.setattr(link, "call", one)
            monkeypatch.setattr(link, "call_many", many)
            return link

        monkeypatch.setattr(store, "_link", counted)


@pytest.mark.usefixtures("slow_thread")
def test_the_next_keep_sends_a_held_outcome_in_its_own_round_trip(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(url)
    try:
        first = delivery("r1", "1_1_1700000000")
        store.finish_soon(first.id, store.begin(first, LEASE), done(first.msg_keys))
        assert status_elsewhere(url, first.id) == DeliveryStatus.PENDING
        trips = RoundTrips(store, monkeypatch)
        second = delivery("r2", "2_1_1700000000")
        claim = store.begin(second, LEASE)
        assert trips.trips == [2]  # the held outcome's script and the keep's, together
        assert list(claim.owned) == ["2_1_1700000000"]
        assert status_elsewhere(url, first.id) == DeliveryStatus.DONE
        assert status_elsewhere(url, second.id) == DeliveryStatus.PENDING
    finally:
        store.close()


@pytest.mark.usefixtures("slow_thread")
def test_this_process_reads_its_held_outcomes_at_once(url: str) -> None:
    store = RedisStore(url)
    try:
        kept = delivery("r3", "3_1_1700000000")
        store.finish_soon(kept.id, store.begin(kept, LEASE), done(kept.msg_keys))
        found = store.get(kept.id)
        assert found is not None
        assert found.status == DeliveryStatus.DONE
    finally:
        store.close()


def test_the_thread_sends_a_held_outcome_when_no_callback_follows(url: str) -> None:
    store = RedisStore(url)
    try:
        kept = delivery("r4", "4_1_1700000000")
        store.finish_soon(kept.id, store.begin(kept, LEASE), done(kept.msg_keys))
        wait_for(
            lambda: status_elsewhere(url, kept.id) == DeliveryStatus.DONE,
            timeout=5,
            what="the thread to send the outcome",
        )
    finally:
        store.close()


@pytest.mark.usefixtures("slow_thread")
def test_a_held_outcome_of_a_vanished_delivery_is_logged_and_the_keep_goes_on(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(url)
    try:
        gone = delivery("r5", "5_1_1700000000")
        store.finish_soon(gone.id, store.begin(gone, LEASE), done(gone.msg_keys))
        store._client.delete(store._delivery_key(gone.id))  # pruned meanwhile, say
        with caplog.at_level(logging.WARNING, logger="flask_oa_recall.store.redis"):
            claim = store.begin(delivery("r6", "6_1_1700000000"), LEASE)
        assert list(claim.owned) == ["6_1_1700000000"]
        assert "outcome of delivery r5 not recorded" in caplog.text
        assert "vanished" in caplog.text
    finally:
        store.close()


@pytest.mark.usefixtures("slow_thread")
def test_a_held_outcome_survives_a_lost_script_cache(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(url)
    try:
        first = delivery("r7", "7_1_1700000000")
        store.finish_soon(first.id, store.begin(first, LEASE), done(first.msg_keys))
        # As after a restart, for these two scripts: EVALSHA answers NOSCRIPT (never
        # SCRIPT FLUSH: the shared server's cache is not this test's).
        monkeypatch.setattr(store._finish, "sha", "0" * 40)
        monkeypatch.setattr(store._begin, "sha", "1" * 40)
        claim = store.begin(delivery("r8", "8_1_1700000000"), LEASE)
        assert list(claim.owned) == ["8_1_1700000000"]
        assert status_elsewhere(url, first.id) == DeliveryStatus.DONE
    finally:
        store.close()


def test_without_grouping_finish_soon_records_at_once(url: str) -> None:
    store = RedisStore(url, group_outcomes=False)
    try:
        kept = delivery("r9", "9_1_1700000000")
        store.finish_soon(kept.id, store.begin(kept, LEASE), done(kept.msg_keys))
        assert status_elsewhere(url, kept.id) == DeliveryStatus.DONE
    finally:
        store.close()
