"""``memory://`` keeps a bounded amount: the oldest finished deliveries and messages go first."""

from __future__ import annotations

from flask_oa_recall.store import DeliveryStatus, MemoryStore, Outcome
from tests.test_store import LEASE, all_ok, make_delivery

A = "messages_recalled:host.on_recall"


def test_the_memory_store_forgets_the_oldest_finished_deliveries_and_messages() -> None:
    store = MemoryStore(max_finished_deliveries=3, max_finished_messages=4)
    failed = make_delivery("f1")
    claim = store.begin(failed, LEASE)
    store.finish(
        failed.id,
        claim,
        Outcome(status=DeliveryStatus.FAILED, receivers={A: "failed"}, failed=frozenset({"f1"})),
    )
    pending = make_delivery("p1")
    store.begin(pending, LEASE)
    ids = []
    for n in range(6):
        delivery = make_delivery(f"k{n}")
        ids.append(delivery.id)
        claim = store.begin(delivery, LEASE)
        store.finish(delivery.id, claim, all_ok(claim, A))

    kept = {d.id for d in store.deliveries(limit=100)}
    assert kept == {failed.id, pending.id, *ids[-3:]}  # failed and pending are never forgotten
    # The four most recently finished messages still deduplicate; older ones were forgotten.
    assert store.begin(make_delivery("k5", "k2"), LEASE).done == ("k5", "k2")
    assert set(store.begin(make_delivery("k1"), LEASE).owned) == {"k1"}
    # The failed message is still claimable with what it had.
    assert set(store.begin(make_delivery("f1"), LEASE).owned) == {"f1"}


def test_a_resumed_finished_delivery_is_not_forgotten_while_it_runs() -> None:
    store = MemoryStore(max_finished_deliveries=1)
    first = make_delivery("a")
    store.finish(first.id, store.begin(first, LEASE), Outcome(status=DeliveryStatus.DONE))
    store.resume(first.id, 0.0)  # pending again
    second = make_delivery("b")
    claim = store.begin(second, LEASE)
    store.finish(second.id, claim, all_ok(claim, A))
    assert store.get(first.id) is not None
    store.prune(before=float("inf"))
    assert store.get(second.id) is None
