"""Every store backend keeps the same promises: one conformance suite over memory, SQLite,
Redis and PostgreSQL.

The Redis cases use the suite's database (13) with a key prefix of their own per test, deleted
afterwards; the PostgreSQL cases use the ``test`` database with a schema of their own per test,
dropped afterwards. They skip when their server is unreachable, except under ``CI=true``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_oa_recall import ConfigError, StoreError, UnknownDelivery
from flask_oa_recall.store import (
    Claim,
    DeliveryBusy,
    DeliveryStatus,
    MemoryStore,
    NewDelivery,
    Outcome,
    SQLiteStore,
    Store,
    open_store,
)
from flask_oa_recall.store.redis import DEFAULT_PREFIX, RedisStore
from tests.servers import postgres_schema

OA = "@TOA#_store"
LEASE = 60.0
A = "messages_recalled:host.on_recall"
B = "messages_recalled:host.mirror"
CB = "callback_received:host.audit"


def make_delivery(
    *keys: str,
    delivery_id: str | None = None,
    received_at: float | None = None,
    official_account: str | None = OA,
    sdk_app_id: int = 1400000000,
) -> NewDelivery:
    """A recall delivery of ``keys``, with a fresh id unless one is given."""
    return NewDelivery(
        id=delivery_id or uuid.uuid4().hex,
        received_at=time.time() if received_at is None else received_at,
        sdk_app_id=sdk_app_id,
        command="OfficialAccount.CallbackAfterMsgWithDraw",
        query={"SdkAppid": str(sdk_app_id), "CallbackCommand": "x", "ClientIP": "127.0.0.1"},
        body=json.dumps({"Official_Account": official_account, "WithdrawMsgList": list(keys)}),
        official_account=official_account,
        msg_keys=tuple(keys),
    )


def all_ok(claim: Claim, *receivers: str) -> Outcome:
    """Every receiver succeeded for every owned message."""
    names = frozenset(receivers)
    return Outcome(
        status=DeliveryStatus.DONE if claim.owned else DeliveryStatus.DUPLICATE,
        receivers=dict.fromkeys(receivers, "ok"),
        succeeded=dict.fromkeys(claim.owned, names),
    )


def redis_cleanup(base_url: str, prefix: str) -> None:
    """Delete every key of the store with ``prefix``."""
    import redis

    client = redis.Redis.from_url(base_url)
    try:
        for key in client.scan_iter(match="{" + prefix + "}:*", count=10_000):
            client.delete(key)
    finally:
        client.close()


def unique_prefix() -> str:
    """A key prefix no other test uses.

    Deliberately outside the conftest's ``*oa-recall-test*`` sweep: a test run in another
    process may fire that sweep at any moment, and it must not delete this test's keys.
    """
    return f"oa-store-suite-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_store_url(redis_url: str) -> Iterator[str]:
    """A Redis store URL with a prefix of this test's own; its keys are deleted afterwards."""
    prefix = unique_prefix()
    yield f"{redis_url}?prefix={prefix}"
    redis_cleanup(redis_url, prefix)


@pytest.fixture
def postgres_store_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL store URL with a schema of this test's own, dropped afterwards."""
    with postgres_schema(postgres_url, "oa_store_suite") as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each backend."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    url: str = request.getfixturevalue(f"{request.param}_store_url")
    return url


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """An empty store of each backend."""
    opened = open_store(store_url, str(tmp_path / "instance"))
    yield opened
    opened.close()


# -- begin ---------------------------------------------------------------------------------------


def test_begin_keeps_the_delivery_pending_and_claims_every_message(store: Store) -> None:
    delivery = make_delivery("k1", "k2")
    claim = store.begin(delivery, LEASE)
    assert claim == Claim(owned={"k1": frozenset(), "k2": frozenset()})
    kept = store.get(delivery.id)
    assert kept is not None
    assert (kept.id, kept.received_at, kept.sdk_app_id, kept.command) == (
        delivery.id,
        delivery.received_at,
        delivery.sdk_app_id,
        delivery.command,
    )
    assert dict(kept.query) == dict(delivery.query)
    assert (kept.body, kept.official_account, kept.msg_keys) == (delivery.body, OA, ("k1", "k2"))
    assert (kept.status, kept.attempts, dict(kept.receivers), kept.last_error) == (
        DeliveryStatus.PENDING,
        1,
        {},
        None,
    )
    assert kept.lease_until == pytest.approx(kept.updated_at + LEASE, abs=1e-3)


def test_begin_keeps_a_delivery_without_messages(store: Store) -> None:
    delivery = NewDelivery(
        id="other-command",
        received_at=time.time(),
        sdk_app_id=1400000000,
        command="C2C.CallbackAfterSendMsg",
        query={},
        body="{}",
    )
    assert store.begin(delivery, LEASE) == Claim()
    kept = store.get("other-command")
    assert kept is not None
    assert (kept.official_account, kept.msg_keys, kept.command) == (
        None,
        (),
        "C2C.CallbackAfterSendMsg",
    )


def test_begin_keeps_unicode_and_large_bodies_intact(store: Store) -> None:
    delivery = make_delivery("键-1", official_account="@TOA#_公众号 \u2603")
    delivery = NewDelivery(**{**vars(delivery), "body": "撤回" * 10_000})
    assert set(store.begin(delivery, LEASE).owned) == {"键-1"}
    kept = store.get(delivery.id)
    assert kept is not None
    assert (kept.body, kept.official_account, kept.msg_keys) == (
        "撤回" * 10_000,
        "@TOA#_公众号 \u2603",
        ("键-1",),
    )


def test_begin_refuses_an_id_that_is_already_kept(store: Store) -> None:
    store.begin(make_delivery("k1", delivery_id="same"), LEASE)
    with pytest.raises(StoreError):
        store.begin(make_delivery("k2", delivery_id="same"), LEASE)


def test_a_message_leased_by_another_delivery_is_busy(store: Store) -> None:
    store.begin(make_delivery("k1", "k2"), LEASE)
    claim = store.begin(make_delivery("k2", "k3"), LEASE)
    assert claim == Claim(owned={"k3": frozenset()}, busy=("k2",))


def test_a_finished_message_is_done_for_every_later_delivery(store: Store) -> None:
    first = make_delivery("k1", "k2")
    claim = store.begin(first, LEASE)
    store.finish(first.id, claim, all_ok(claim, A))
    later = make_delivery("k2", "k1")
    assert store.begin(later, LEASE) == Claim(done=("k2", "k1"))
    kept = store.get(first.id)
    assert kept is not None
    assert (kept.status, dict(kept.receivers), kept.lease_until) == ("done", {A: "ok"}, 0.0)


def test_messages_are_told_apart_by_sdkappid_official_account_and_msgkey(store: Store) -> None:
    # "a:b" + "c" and "a" + "b:c" would collide if the parts were only joined with ':'.
    first = make_delivery("c", official_account="a:b")
    claim = store.begin(first, LEASE)
    store.finish(first.id, claim, all_ok(claim, A))
    assert set(store.begin(make_delivery("b:c", official_account="a"), LEASE).owned) == {"b:c"}
    assert set(store.begin(make_delivery("c", official_account="a:b:"), LEASE).owned) == {"c"}
    assert set(store.begin(make_delivery("c", official_account="a:b", sdk_app_id=2), 60).owned) == {
        "c"
    }
    assert store.begin(make_delivery("c", official_account="a:b"), LEASE).done == ("c",)


#: MsgKeys that JSON escapes, or that SQLite's text functions could mistake (NUL).
AWKWARD_KEYS = (
    'q"uote',
    "back\\slash",
    "caf\u00e9",
    "\U0001f600",
    "tab\tnew\nline",
    "\x01",
    "nul\x00k",
)


@pytest.mark.parametrize("with_nul", [False, True], ids=["escaped", "with-nul"])
def test_many_awkward_msgkeys_are_claimed_released_and_found_again_exactly(
    store: Store, with_nul: bool
) -> None:
    keys = tuple(k for k in AWKWARD_KEYS if with_nul or "\x00" not in k)
    first = make_delivery(*keys)
    claim = store.begin(first, LEASE)
    assert set(claim.owned) == set(keys)
    store.finish(first.id, claim, all_ok(claim, A))
    kept = store.get(first.id)
    assert kept is not None
    assert (kept.status, kept.msg_keys) == ("done", keys)
    # Each key was released under its own exact text: a redelivery finds every one done.
    assert sorted(store.begin(make_delivery(*keys), LEASE).done) == sorted(keys)
    assert set(store.begin(make_delivery(*keys, "new"), LEASE).owned) == {"new"}


def test_an_expired_lease_can_be_taken_by_another_delivery(store: Store) -> None:
    # A lease of 0 s ran out the moment it was granted: its worker is as good as dead.
    store.begin(make_delivery("k1"), 0.0)
    assert set(store.begin(make_delivery("k1"), LEASE).owned) == {"k1"}


def test_a_failed_message_stays_claimable_with_the_receivers_that_succeeded(store: Store) -> None:
    first = make_delivery("k1", "k2")
    claim = store.begin(first, LEASE)
    store.finish(
        first.id,
        claim,
        Outcome(
            status=DeliveryStatus.FAILED,
            receivers={A: "ok", B: "failed"},
            succeeded={"k1": frozenset({A}), "k2": frozenset({A, B})},
            failed=frozenset({"k1"}),
            error="messages_recalled:host.mirror: RuntimeError: boom",
        ),
    )
    kept = store.get(first.id)
    assert kept is not None
    assert (kept.status, dict(kept.receivers), kept.last_error) == (
        "failed",
        {A: "ok", B: "failed"},
        "messages_recalled:host.mirror: RuntimeError: boom",
    )
    redelivery = store.begin(make_delivery("k2", "k1"), LEASE)
    assert redelivery == Claim(owned={"k1": frozenset({A})}, done=("k2",))


# -- resume --------------------------------------------------------------------------------------


def test_resume_of_an_unknown_delivery_raises_unknown_delivery(store: Store) -> None:
    with pytest.raises(UnknownDelivery) as caught:
        store.resume("no-such-delivery", LEASE)
    assert isinstance(caught.value, KeyError)
    assert caught.value.delivery_id == "no-such-delivery"


def test_resume_of_a_delivery_with_a_live_lease_raises_delivery_busy(store: Store) -> None:
    delivery = make_delivery("k1")
    store.begin(delivery, LEASE)
    with pytest.raises(DeliveryBusy):
        store.resume(delivery.id, LEASE)
    kept = store.get(delivery.id)
    assert kept is not None
    assert (kept.status, kept.attempts) == ("pending", 1)


def test_resume_takes_over_an_interrupted_delivery(store: Store) -> None:
    delivery = make_delivery("k1", "k2")
    store.begin(delivery, 0.0)  # the worker died: its lease ran out, finish never came
    kept, claim = store.resume(delivery.id, LEASE)
    assert claim == Claim(owned={"k1": frozenset(), "k2": frozenset()})
    assert (kept.status, kept.attempts) == ("pending", 2)
    assert kept.lease_until == pytest.approx(kept.updated_at + LEASE, abs=1e-3)
    assert store.get(delivery.id) == kept
    with pytest.raises(DeliveryBusy):
        store.resume(delivery.id, LEASE)


def test_resume_of_a_failed_delivery_reclaims_only_unfinished_messages(store: Store) -> None:
    delivery = make_delivery("k1", "k2")
    claim = store.begin(delivery, LEASE)
    store.finish(
        delivery.id,
        claim,
        Outcome(
            status=DeliveryStatus.FAILED,
            receivers={CB: "ok", A: "ok", B: "failed"},
            succeeded={"k1": frozenset({A}), "k2": frozenset({A, B})},
            failed=frozenset({"k1"}),
            error="B failed",
        ),
    )
    kept, again = store.resume(delivery.id, LEASE)
    assert again == Claim(
        owned={"k1": frozenset({A})}, done=("k2",), receivers_ok=frozenset({CB, A})
    )
    assert (kept.status, kept.attempts, dict(kept.receivers)) == (
        "pending",
        2,
        {CB: "ok", A: "ok", B: "failed"},
    )
    assert store.get(delivery.id) == kept
    listed = store.deliveries(statuses=["pending"])
    assert [d.id for d in listed] == [delivery.id]
    assert store.deliveries(statuses=["failed"]) == []


def test_finish_merges_receivers_over_attempts_and_clears_the_error(store: Store) -> None:
    delivery = make_delivery("k1")
    claim = store.begin(delivery, LEASE)
    store.finish(
        delivery.id,
        claim,
        Outcome(
            status=DeliveryStatus.FAILED,
            receivers={A: "ok", B: "failed"},
            succeeded={"k1": frozenset({A})},
            failed=frozenset({"k1"}),
            error="B failed",
        ),
    )
    _, again = store.resume(delivery.id, LEASE)
    assert again.owned == {"k1": frozenset({A})}
    # The replay only runs B; a later failure of A could never undo its success.
    store.finish(
        delivery.id,
        again,
        Outcome(
            status=DeliveryStatus.DONE,
            receivers={B: "ok", A: "failed"},
            succeeded={"k1": frozenset({B})},
        ),
    )
    kept = store.get(delivery.id)
    assert kept is not None
    assert (kept.status, dict(kept.receivers), kept.last_error, kept.attempts) == (
        "done",
        {A: "ok", B: "ok"},
        None,
        2,
    )
    assert store.begin(make_delivery("k1"), LEASE).done == ("k1",)
    assert [d.id for d in store.deliveries(statuses=["done"])] == [delivery.id]


def test_a_late_finish_of_a_lost_lease_does_not_release_the_new_owner(store: Store) -> None:
    slow = make_delivery("k1")
    slow_claim = store.begin(slow, 0.0)
    fast = make_delivery("k1")
    fast_claim = store.begin(fast, LEASE)
    assert set(fast_claim.owned) == {"k1"}
    store.finish(
        slow.id,
        slow_claim,
        Outcome(status="failed", receivers={A: "failed"}, failed=frozenset({"k1"}), error="x"),
    )
    # fast still holds k1: a third delivery finds it busy, not free.
    assert store.begin(make_delivery("k1"), LEASE).busy == ("k1",)


def test_finish_of_an_unknown_delivery_raises_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        store.finish("no-such-delivery", Claim(), Outcome(status=DeliveryStatus.DONE))


def test_get_of_an_unknown_delivery_is_none(store: Store) -> None:
    assert store.get("no-such-delivery") is None


# -- listing and pruning -------------------------------------------------------------------------


def _keep(store: Store, status: str, received_at: float, key: str) -> str:
    delivery = make_delivery(key, received_at=received_at)
    claim = store.begin(delivery, LEASE)
    if status == DeliveryStatus.PENDING:
        return delivery.id
    if status == DeliveryStatus.FAILED:
        outcome = Outcome(
            status=status, receivers={A: "failed"}, failed=frozenset(claim.owned), error="x"
        )
    else:
        outcome = all_ok(claim, A)
    assert outcome.status == status
    store.finish(delivery.id, claim, outcome)
    return delivery.id


@pytest.fixture
def kept_ids(store: Store) -> dict[str, str]:
    """Five deliveries kept out of arrival order: name -> id."""
    base = time.time() - 1000
    plan = [
        ("done-old", "done", base + 10, "m1"),
        ("pending", "pending", base + 50, "m2"),
        ("failed", "failed", base + 30, "m3"),
        ("done-new", "done", base + 40, "m4"),
        ("duplicate", "duplicate", base + 20, "m1"),  # m1 is done: nothing owned
    ]
    return {name: _keep(store, status, at, key) for name, status, at, key in plan}


@pytest.mark.parametrize(
    ("statuses", "limit", "expected"),
    [
        (None, 100, ["pending", "done-new", "failed", "duplicate", "done-old"]),
        ([], 100, ["pending", "done-new", "failed", "duplicate", "done-old"]),
        (None, 2, ["pending", "done-new"]),
        (["done"], 100, ["done-new", "done-old"]),
        (["failed", "pending"], 100, ["pending", "failed"]),
        (["done", "duplicate", "failed"], 2, ["done-new", "failed"]),
        (("duplicate",), 100, ["duplicate"]),
        (["no-such-status"], 100, []),
        (None, 0, []),
    ],
    ids=[
        "all",
        "empty-filter-is-all",
        "limit",
        "one-status",
        "two-statuses",
        "three-statuses-limited",
        "tuple-filter",
        "unknown-status",
        "zero-limit",
    ],
)
def test_deliveries_are_listed_newest_first_with_filter_and_limit(
    store: Store,
    kept_ids: dict[str, str],
    statuses: Sequence[str] | None,
    limit: int,
    expected: list[str],
) -> None:
    by_id = {v: k for k, v in kept_ids.items()}
    listed = store.deliveries(statuses=statuses, limit=limit)
    assert [by_id[d.id] for d in listed] == expected


def test_prune_drops_only_finished_deliveries_received_before_the_cut(
    store: Store, kept_ids: dict[str, str]
) -> None:
    cut = store.get(kept_ids["done-new"])
    assert cut is not None
    assert store.prune(before=cut.received_at) == 2  # done-old and duplicate
    remaining = {d.id for d in store.deliveries()}
    assert remaining == {kept_ids[n] for n in ("pending", "failed", "done-new")}
    assert store.prune(before=time.time() + 3600) == 1  # done-new; pending and failed stay
    assert store.prune(before=time.time() + 3600, include_failed=True) == 1
    assert [d.id for d in store.deliveries()] == [kept_ids["pending"]]
    assert store.prune(before=time.time() + 3600, include_failed=True) == 0


def test_prune_takes_infinite_bounds(store: Store, kept_ids: dict[str, str]) -> None:
    assert store.prune(before=float("-inf"), include_failed=True) == 0
    assert store.prune(before=float("inf"), include_failed=True) == 4
    assert [d.id for d in store.deliveries()] == [kept_ids["pending"]]


def test_prune_forgets_finished_messages_but_not_unfinished_ones(store: Store) -> None:
    done = make_delivery("finished")
    claim = store.begin(done, LEASE)
    store.finish(done.id, claim, all_ok(claim, A))
    failed = make_delivery("unfinished")
    claim = store.begin(failed, LEASE)
    store.finish(
        failed.id,
        claim,
        Outcome(
            status="failed",
            receivers={A: "ok", B: "failed"},
            succeeded={"unfinished": frozenset({A})},
            failed=frozenset({"unfinished"}),
            error="B failed",
        ),
    )
    assert store.prune(before=time.time() + 3600, include_failed=True) == 2
    # A redelivery of a message forgotten by prune is dispatched again; the failed one still
    # remembers that A already succeeded.
    assert store.begin(make_delivery("finished", "unfinished"), LEASE) == Claim(
        owned={"finished": frozenset(), "unfinished": frozenset({A})}
    )


def test_prune_keeps_finished_messages_updated_after_the_cut(store: Store) -> None:
    delivery = make_delivery("k1", received_at=time.time() - 7200)
    claim = store.begin(delivery, LEASE)
    store.finish(delivery.id, claim, all_ok(claim, A))
    assert store.prune(before=time.time() - 3600) == 1
    assert store.begin(make_delivery("k1"), LEASE).done == ("k1",)


# -- health --------------------------------------------------------------------------------------


def test_ping_passes_and_the_store_works_again_after_close(store: Store) -> None:
    store.ping()
    store.close()
    delivery = make_delivery("k1")
    assert set(store.begin(delivery, LEASE).owned) == {"k1"}
    store.ping()
    assert store.get(delivery.id) is not None


def test_every_backend_satisfies_the_store_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    assert isinstance(store.url, str)


# -- concurrency ---------------------------------------------------------------------------------

RACE_KEYS = ("r1", "r2", "r3", "r4", "r5")


def _assert_one_owner_per_key(claims: Sequence[Claim], contenders: int) -> None:
    assert len(claims) == contenders
    for key in RACE_KEYS:
        owners = [c for c in claims if key in c.owned]
        assert len(owners) == 1, f"{key} owned by {len(owners)} deliveries"
        assert sum(key in c.busy for c in claims) == contenders - 1


def test_threads_racing_for_the_same_messages_get_exactly_one_owner_each(store: Store) -> None:
    contenders = 16
    barrier = threading.Barrier(contenders)
    claims: list[Claim] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def contend() -> None:
        try:
            barrier.wait(timeout=30)
            # Each thread lists the keys in its own order, as Tencent might.
            keys = list(RACE_KEYS)
            if threading.get_ident() % 2:
                keys.reverse()
            claim = store.begin(make_delivery(*keys), LEASE)
            with lock:
                claims.append(claim)
        except BaseException as err:  # reported below, in the test's thread
            with lock:
                errors.append(err)
        finally:
            if isinstance(store, SQLiteStore):
                store.close()  # this thread's connection; Redis's close ends the whole pool

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    _assert_one_owner_per_key(claims, contenders)


def claim_in_child(url: str, instance: str, barrier: Any, results: Any) -> None:
    """Run in a separate process: open the store, wait for the others, claim RACE_KEYS."""
    try:
        store = open_store(url, instance)
        barrier.wait(timeout=60)
        claim = store.begin(make_delivery(*RACE_KEYS), LEASE)
        store.close()
        results.put(("ok", sorted(claim.owned), list(claim.busy), list(claim.done)))
    except BaseException as err:
        results.put(("error", repr(err), [], []))


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def test_processes_racing_for_the_same_messages_get_exactly_one_owner_each(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
        # Create the schema first, as the first request of a gunicorn worker would.
        SQLiteStore(str(tmp_path / "shared.sqlite3")).ping()
    else:
        url = request.getfixturevalue(f"{backend}_store_url")
    contenders = 6
    # spawn, not fork: a forked child of a threaded pytest process may deadlock.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(contenders)
    results = ctx.Queue()
    children = [
        ctx.Process(target=claim_in_child, args=(url, str(tmp_path), barrier, results))
        for _ in range(contenders)
    ]
    for child in children:
        child.start()
    try:
        answers = [results.get(timeout=120) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join(timeout=10)
    assert [a for a in answers if a[0] != "ok"] == []
    owners = {key: sum(key in a[1] for a in answers) for key in RACE_KEYS}
    assert owners == dict.fromkeys(RACE_KEYS, 1)
    assert all(sorted(a[1] + a[2]) == sorted(RACE_KEYS) and a[3] == [] for a in answers)


# -- open_store ----------------------------------------------------------------------------------


def test_open_store_defaults_to_sqlite_in_the_instance_folder(tmp_path: Path) -> None:
    store = open_store(None, str(tmp_path / "instance"))
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "instance" / "oa_recall.sqlite3")
    store.ping()  # creates the instance folder
    assert (tmp_path / "instance" / "oa_recall.sqlite3").is_file()
    store.close()


def test_open_store_puts_a_relative_sqlite_path_in_the_instance_folder(tmp_path: Path) -> None:
    store = open_store("sqlite:///data/deliveries.db", str(tmp_path / "instance"))
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "instance" / "data" / "deliveries.db")


def test_open_store_keeps_an_absolute_sqlite_path(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/abs.db", "/nowhere")
    assert isinstance(store, SQLiteStore)
    assert store.path == f"{tmp_path}/abs.db"


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory://", "/nowhere"), MemoryStore)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/x", "unknown scheme 'mysql'"),
        ("deliveries.db", "unknown scheme ''"),
        ("sqlite://relative.db", "is not a SQLite URL"),
        ("sqlite:///", "is not a SQLite URL"),
        ("sqlite:", "is not a SQLite URL"),
        ("redis://127.0.0.1:6379/13?prefix={x}", "hold no '{' or '}'"),
        ("redis://127.0.0.1:6379/13?prefix=", "must be non-empty"),
        ("redis://127.0.0.1:6379/13?prefix=a&prefix=b", "'prefix' 2 times"),
        ("redis://127.0.0.1:6379/13?no_such_option=1", "unknown option"),
        ("redis://127.0.0.1:6379/13?socket_timeout=soon", "socket_timeout"),
    ],
    ids=[
        "unknown-scheme",
        "no-scheme",
        "sqlite-two-slashes",
        "sqlite-no-path",
        "sqlite-bare",
        "redis-prefix-with-braces",
        "redis-empty-prefix",
        "redis-prefix-twice",
        "redis-unknown-option",
        "redis-bad-option-value",
    ],
)
def test_open_store_refuses_a_bad_url_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        open_store(url, "/nowhere")


@pytest.mark.parametrize(
    ("url", "prefix", "where"),
    [
        ("redis://127.0.0.1:6379/13", DEFAULT_PREFIX, "127.0.0.1:6379 db 13"),
        ("redis://127.0.0.1/13?prefix=myapp", "myapp", "127.0.0.1:6379 db 13"),
        ("redis://cache.internal:6380?prefix=a:b", "a:b", "cache.internal:6380 db 0"),
        ("rediss://:pw@cache.internal:6380/2", DEFAULT_PREFIX, "cache.internal:6380 db 2"),
        ("unix:///run/redis.sock?db=3&prefix=p", "p", "/run/redis.sock db 3"),
    ],
    ids=["default-prefix", "prefix", "prefix-with-colon", "tls", "unix-socket"],
)
def test_open_store_parses_redis_urls_without_connecting(url: str, prefix: str, where: str) -> None:
    store = open_store(url, "/nowhere")
    assert isinstance(store, RedisStore)
    assert store.prefix == prefix
    assert where in repr(store)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_redis_store_errors_name_the_server_but_never_the_password() -> None:
    port = _closed_port()
    store = open_store(f"redis://user:s3cret-pw@127.0.0.1:{port}/0", "/nowhere")
    assert "s3cret-pw" not in store.url
    assert store.url == f"redis://user:***@127.0.0.1:{port}/0"
    for call in (
        lambda: store.ping(),
        lambda: store.begin(make_delivery("k1"), LEASE),
        lambda: store.get("x"),
        lambda: store.deliveries(),
        lambda: store.prune(before=0),
        lambda: store.resume("x", LEASE),
        lambda: store.finish("x", Claim(), Outcome(status="done")),
    ):
        with pytest.raises(StoreError) as info:
            call()
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "s3cret" not in str(info.value)
        assert "ConnectionError" in str(info.value)
    store.close()


# -- backend specifics ---------------------------------------------------------------------------


def _readonly(path: Path) -> None:
    """Make SQLite treat the database file at ``path`` as read-only, even for root.

    Tests run as root, and root ignores file modes, so ``chmod 444`` proves nothing here. Byte
    18 of the header is the file format *write* version: SQLite opens a file whose write
    version is above 2 read-only (https://sqlite.org/fileformat.html, section 1.3.3), which
    fails every write with SQLITE_READONLY exactly as a non-root user's ``chmod 444`` file
    does, on any filesystem and without privileges. Writing 2 back undoes it.
    """
    _write_version(path, 3)


def _write_version(path: Path, version: int) -> None:
    with path.open("r+b") as file:
        file.seek(18)
        file.write(bytes([version]))


def test_a_read_only_sqlite_file_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(str(path))
    delivery = make_delivery("k1")
    store.begin(delivery, LEASE)
    store.close()  # checkpoints the WAL into the file, so the header change is seen
    _readonly(path)
    with pytest.raises(StoreError, match="readonly database"):
        store.begin(make_delivery("k2"), LEASE)
    with pytest.raises(StoreError, match="readonly database"):
        store.ping()
    kept = store.get(delivery.id)  # reading still works
    assert kept is not None
    assert kept.status == "pending"
    store.close()


def test_a_sqlite_store_writes_again_once_its_file_is_writable_again(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(str(path))
    store.ping()
    store.close()
    _readonly(path)
    with pytest.raises(StoreError, match="readonly database"):
        store.begin(make_delivery("k1"), LEASE)
    _write_version(path, 2)
    # The failed write dropped the connection that had found the file read-only.
    delivery = make_delivery("k1")
    assert set(store.begin(delivery, LEASE).owned) == {"k1"}
    assert store.get(delivery.id) is not None
    store.close()


def test_a_sqlite_store_recreates_a_database_file_that_was_removed(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(str(path))
    store.ping()
    store.close()
    for leftover in tmp_path.glob("store.sqlite3*"):
        leftover.unlink()
    delivery = make_delivery("k1")
    assert set(store.begin(delivery, LEASE).owned) == {"k1"}
    assert store.get(delivery.id) is not None
    store.close()


def test_a_sqlite_path_that_cannot_be_created_raises_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    store = SQLiteStore(str(tmp_path / "a-file" / "store.sqlite3"))
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        store.ping()


@pytest.mark.redis
def test_redis_keys_share_one_hash_tag_and_one_cluster_slot(redis_store_url: str) -> None:
    import redis
    from redis.crc import key_slot

    store = open_store(redis_store_url, "/nowhere")
    assert isinstance(store, RedisStore)
    for official_account in ("a:b", "{tricky}", "@TOA#_x"):
        delivery = make_delivery("k:1", "k}2", official_account=official_account)
        claim = store.begin(delivery, LEASE)
        store.finish(delivery.id, claim, all_ok(claim, A))
    store.ping()
    client = redis.Redis.from_url(redis_store_url.split("?")[0])
    keys = list(client.scan_iter(match="{" + store.prefix + "}:*", count=500))
    client.close()
    store.close()
    assert len(keys) > 10
    assert {key_slot(k) for k in keys} == {key_slot(("{" + store.prefix + "}").encode())}
    assert all(k.startswith(("{" + store.prefix + "}:").encode()) for k in keys)


@pytest.mark.redis
def test_two_redis_prefixes_on_one_database_are_separate_stores(redis_url: str) -> None:
    first, second = unique_prefix(), unique_prefix()
    try:
        one = open_store(f"{redis_url}?prefix={first}", "/nowhere")
        two = open_store(f"{redis_url}?prefix={second}", "/nowhere")
        delivery = make_delivery("k1")
        claim = one.begin(delivery, LEASE)
        one.finish(delivery.id, claim, all_ok(claim, A))
        assert set(two.begin(make_delivery("k1"), LEASE).owned) == {"k1"}
        assert two.get(delivery.id) is None
        assert [d.id for d in one.deliveries()] == [delivery.id]
        one.close()
        two.close()
    finally:
        redis_cleanup(redis_url, first)
        redis_cleanup(redis_url, second)


def count_sent_commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of each command written to any socket from now on, one per write.

    Counted on the wire, whichever way the store reaches its connections (redis-py's or the
    store's own, with or without hiredis); a command is written in one ``sendall``.
    """
    sent: list[str] = []
    sendall = socket.socket.sendall

    def sending(self: socket.socket, data: Any, *args: Any) -> Any:
        wire = bytes(data)
        if wire.startswith(b"*"):
            sent.append(wire.split(b"\r\n")[2].decode())  # *<n>, $<len>, the command's name
        return sendall(self, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", sending)
    return sent


@pytest.mark.redis
def test_a_redis_request_costs_two_commands(
    redis_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(redis_store_url, "/nowhere")
    assert isinstance(store, RedisStore)
    warm = make_delivery("k0")
    store.finish(warm.id, store.begin(warm, LEASE), Outcome(status="done"))  # scripts loaded
    sent = count_sent_commands(monkeypatch)
    delivery = make_delivery("k1", "k2", "k3")
    claim = store.begin(delivery, LEASE)
    store.finish(delivery.id, claim, all_ok(claim, A))
    assert sent == ["EVALSHA", "EVALSHA"]
    store.close()


@pytest.mark.redis
@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "redis-py"])
def test_a_redis_command_error_becomes_store_error(redis_store_url: str, hiredis: bool) -> None:
    import redis

    store = open_store(redis_store_url, "/nowhere")
    assert isinstance(store, RedisStore)
    if not hiredis:
        store._hiredis = None
    client = redis.Redis.from_url(redis_store_url.split("?")[0])
    client.set("{" + store.prefix + "}:all", "not a sorted set")
    with pytest.raises(StoreError, match="ResponseError") as info:
        store.begin(make_delivery("k1"), LEASE)
    assert "127.0.0.1:6379 db 13" in str(info.value)
    with pytest.raises(StoreError, match="ResponseError"):
        store.deliveries()
    client.delete("{" + store.prefix + "}:all")
    client.close()
    # The error was the whole reply: the same connection serves the next command.
    assert set(store.begin(make_delivery("k2"), LEASE).owned) == {"k2"}
    store.close()


@pytest.mark.redis
@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "redis-py"])
def test_a_redis_store_replaces_a_connection_the_server_closed(
    redis_store_url: str, hiredis: bool
) -> None:
    import redis

    name = f"oa-recall-test-{uuid.uuid4().hex[:12]}"
    store = open_store(f"{redis_store_url}&client_name={name}", "/nowhere")
    assert isinstance(store, RedisStore)
    if not hiredis:
        store._hiredis = None  # as without the hiredis extra: redis-py's connection methods
    admin = redis.Redis.from_url(redis_store_url.split("?")[0], decode_responses=True)
    first = make_delivery("k1")
    claim = store.begin(first, LEASE)
    store.finish(first.id, claim, all_ok(claim, A))
    ours = [c["id"] for c in admin.client_list() if c["name"] == name]
    assert ours, "the store's connections carry the URL's client_name"
    for client_id in ours:
        admin.client_kill_filter(_id=client_id)
    # Not retried: the store notices the closed connection before it sends anything.
    second = make_delivery("k2")
    claim = store.begin(second, LEASE)
    assert set(claim.owned) == {"k2"}
    store.finish(second.id, claim, all_ok(claim, A))
    store.close()
    third = make_delivery("k3")
    assert set(store.begin(third, LEASE).owned) == {"k3"}  # reconnects after close
    store.close()
    admin.close()


@pytest.mark.redis
@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "redis-py"])
def test_a_redis_store_sends_a_script_the_server_lacks(
    redis_store_url: str, monkeypatch: pytest.MonkeyPatch, hiredis: bool
) -> None:
    store = open_store(redis_store_url, "/nowhere")
    assert isinstance(store, RedisStore)
    if not hiredis:
        store._hiredis = None
    # A digest the server has never seen stands for a script cache emptied by a restart.
    monkeypatch.setattr(store._begin, "sha", "0" * 40)
    sent = count_sent_commands(monkeypatch)
    claim = store.begin(make_delivery("k1"), LEASE)
    assert set(claim.owned) == {"k1"}
    assert sent[-2:] == ["EVALSHA", "EVAL"]
    store.close()


@pytest.mark.redis
def test_a_redis_store_packs_commands_with_or_without_hiredis(redis_store_url: str) -> None:
    store = open_store(f"{redis_store_url}&encoding=utf-8", "/nowhere")
    assert isinstance(store, RedisStore)
    store._hiredis = None  # as without the hiredis extra: redis-py's connection methods
    delivery = make_delivery("clé-1", "k2")
    claim = store.begin(delivery, LEASE)
    assert set(claim.owned) == {"clé-1", "k2"}
    store.finish(delivery.id, claim, all_ok(claim, A))
    kept = store.get(delivery.id)
    assert kept is not None
    assert kept.msg_keys == ("clé-1", "k2")
    assert kept.status == DeliveryStatus.DONE
    store.close()


def test_a_redis_store_url_with_another_encoding_is_refused_at_start_up() -> None:
    # Without hiredis, redis-py would send MsgKeys in latin-1 while the scripts keep UTF-8 JSON:
    # a non-ASCII MsgKey would be kept and never found again.
    with pytest.raises(ConfigError, match="encoding=latin-1") as caught:
        open_store("redis://127.0.0.1:6379/13?encoding=latin-1", "/nowhere")
    assert caught.value.key == "OA_RECALL_STORE"


@given(
    items=st.lists(st.text()),
    pairs=st.dictionaries(st.text(), st.text()),
)
def test_redis_store_json_is_what_json_dumps_writes(
    items: list[str], pairs: dict[str, str]
) -> None:
    from flask_oa_recall.store.redis import _json_list, _json_object

    assert _json_list(items) == json.dumps(items)
    assert _json_object(pairs) == json.dumps(pairs)


def _read_command(lines: Any) -> list[bytes]:
    """One client command (an array of bulk strings) from a RESP stream; ``[]`` at its end."""
    head = lines.readline()
    if not head.startswith(b"*"):
        return []
    command = []
    for _ in range(int(head[1:])):
        size = int(lines.readline()[1:])
        command.append(lines.read(size + 2)[:size])
    return command


class LateRedis:
    """A fake Redis on 127.0.0.1: answers what a store asks before its scripts (HELLO, GET,
    EXISTS, SET, CLIENT ...), answers the first ``EVALSHA`` after ``late`` seconds with ``busy`` and
    every later one at once with ``owned``."""

    def __init__(self, late: float) -> None:
        self.late = late
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.scripts = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.accept, daemon=True)]
        self.threads[0].start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self.serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def answer(self, command: list[bytes]) -> bytes:
        name = command[0].upper()
        if name == b"EVALSHA":
            with self.lock:
                self.scripts += 1
                first = self.scripts == 1
            if first:
                time.sleep(self.late)
                return b"*2\r\n$4\r\nbusy\r\n$0\r\n\r\n"
            return b"*2\r\n$5\r\nowned\r\n$2\r\n[]\r\n"
        # RESP3 (HELLO 3): a missing key is "_" (redis-py's own parser refuses RESP2's "$-1").
        answers = {b"GET": b"_\r\n", b"EXISTS": b":0\r\n", b"HELLO": b"%1\r\n+proto\r\n:3\r\n"}
        return answers.get(name, b"+OK\r\n")

    def serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            while command := _read_command(lines):
                try:
                    conn.sendall(self.answer(command))
                except OSError:
                    return

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "redis-py"])
def test_a_redis_reply_that_came_too_late_is_never_read_as_the_next_one(hiredis: bool) -> None:
    from flask_oa_recall.store._redis_link import hiredis_available

    if hiredis and not hiredis_available():
        pytest.skip("hiredis is not installed (the hiredis extra)")
    server = LateRedis(late=1.0)
    try:
        store = open_store(
            f"redis://127.0.0.1:{server.port}/0?prefix=late&socket_timeout=0.2", "/nowhere"
        )
        assert isinstance(store, RedisStore)
        if not hiredis:
            store._hiredis = None
        with pytest.raises(StoreError, match="TimeoutError"):
            store.begin(make_delivery("k1"), LEASE)
        time.sleep(1.2)  # the late "busy" reaches the connection that gave up on it
        claim = store.begin(make_delivery("k1"), LEASE)
        assert set(claim.owned) == {"k1"}  # the answer to this command, on a new connection
        store.close()
    finally:
        server.close()


@pytest.mark.redis
def test_a_redis_delivery_keeps_its_json_fields_as_json_dumps_writes_them(
    redis_store_url: str,
) -> None:
    import redis

    store = open_store(redis_store_url, "/nowhere")
    assert isinstance(store, RedisStore)
    keys = ('k"1', "clé\\2", "k3")
    delivery = make_delivery(*keys)
    claim = store.begin(delivery, LEASE)
    store.finish(delivery.id, claim, all_ok(claim, A, B))
    client = redis.Redis.from_url(redis_store_url.split("?")[0], decode_responses=True)
    kept = client.hgetall("{" + store.prefix + "}:d:" + delivery.id)
    compact = (",", ":")  # members are [sdkappid,"official_account","msgkey"], no spaces
    head = [delivery.sdk_app_id, delivery.official_account or ""]
    member = {k: json.dumps([*head, k], separators=compact) for k in keys}
    assert kept["msg_keys"] == json.dumps(list(keys))
    assert kept["members"] == json.dumps(member)
    assert kept["query"] == json.dumps(dict(delivery.query))
    assert json.loads(kept["receivers"]) == {A: "ok", B: "ok"}
    for key in keys:
        state = client.hgetall("{" + store.prefix + "}:m:" + member[key])
        assert state["done"] == "1"
        assert json.loads(state["receivers_done"]) == sorted([A, B])
    client.close()
    store.close()


@pytest.mark.redis
def test_a_redis_store_used_after_fork_opens_its_own_connections(redis_store_url: str) -> None:
    store = open_store(redis_store_url, "/nowhere")
    store.ping()  # the parent holds a pooled connection
    store.begin(make_delivery("parent-key"), LEASE)  # and one of the store's own
    assert isinstance(store, RedisStore)
    parents = [id(conn) for conn in store._idle]
    assert parents
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; forking is the point here
        # (gunicorn forks its workers), and the child only talks to Redis before _exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            claim = store.begin(make_delivery("child-key"), LEASE)
            fresh = not {id(conn) for conn in store._idle} & set(parents)
            code = 0 if set(claim.owned) == {"child-key"} and fresh else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    try:
        assert os.read(read, 1) == bytes([0])
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    store.ping()  # the parent's connections still work
    assert set(store.begin(make_delivery("parent-key-2"), LEASE).owned) == {"parent-key-2"}
    kept = sorted(d.msg_keys for d in store.deliveries())
    assert kept == [("child-key",), ("parent-key",), ("parent-key-2",)]
    store.close()


@pytest.mark.redis
def test_a_redis_connection_without_a_visible_socket_still_serves_the_hiredis_link(
    redis_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hiredis link writes to redis-py's private ``_sock``; a redis-py that keeps its socket
    # elsewhere must not break the store: the link falls back to the connection's methods.
    from flask_oa_recall.store import _redis_link
    from flask_oa_recall.store._redis_link import HiredisLink, hiredis_available

    if not hiredis_available():
        pytest.skip("hiredis is not installed (the hiredis extra)")
    monkeypatch.setattr(_redis_link, "_socket_of", lambda conn: None)
    store = open_store(redis_store_url, "/nowhere")
    assert isinstance(store, RedisStore)
    first = make_delivery("k1", "k2")
    claim = store.begin(first, LEASE)
    store.finish(first.id, claim, all_ok(claim, A))
    assert store.begin(make_delivery("k1"), LEASE).done == ("k1",)
    links = list(store._links)
    assert links
    assert all(isinstance(link, HiredisLink) and link._fallback for link in links)
    store.close()
