"""Every store records the version of its layout; an older package refuses a newer layout."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from flask_oa_recall import StoreError
from flask_oa_recall.errors import LayoutError
from flask_oa_recall.store import MemoryStore, Outcome, SQLiteStore, Store, open_store
from flask_oa_recall.store.postgres import PostgresStore
from flask_oa_recall.store.redis import RedisStore
from tests import test_store as suite
from tests.test_store import LEASE, make_delivery

# The conformance suite's fixtures: a store of each backend, a Redis URL with its own prefix.
store_url = suite.store_url
store = suite.store
redis_store_url = suite.redis_store_url
postgres_store_url = suite.postgres_store_url

FUTURE = 99


def test_every_store_class_names_the_layout_it_reads_and_writes() -> None:
    for cls in (MemoryStore, SQLiteStore, RedisStore, PostgresStore):
        assert isinstance(cls.layout_version, int)
        assert cls.layout_version >= 1


def test_a_fresh_store_holds_no_layout_until_it_keeps_something(store: Store) -> None:
    if isinstance(store, MemoryStore):
        assert store.stored_layout_version() == store.layout_version
    else:
        assert store.stored_layout_version() is None
    delivery = make_delivery("k1")
    store.finish(delivery.id, store.begin(delivery, LEASE), Outcome(status="done"))
    assert store.stored_layout_version() == store.layout_version


def test_an_older_sqlite_store_refuses_a_newer_layout_and_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    first = SQLiteStore(str(path))
    first.ping()
    first.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT OR REPLACE INTO oa_recall_meta VALUES ('layout_version', ?)", (FUTURE,))
    conn.commit()
    conn.close()

    store = SQLiteStore(str(path))
    assert store.stored_layout_version() == FUTURE
    with pytest.raises(LayoutError, match=f"layout version {FUTURE}") as info:
        store.begin(make_delivery("k1"), LEASE)
    assert isinstance(info.value, StoreError)  # the request path's outage rules apply
    assert f"reads layout version {store.layout_version} at most" in str(info.value)
    assert "pip install -U flask-oa-recall" in str(info.value)
    with pytest.raises(LayoutError):
        store.deliveries()
    # Nothing was written by the refusing package.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM oa_recall_deliveries").fetchone() == (0,)
    conn.close()


def test_the_layout_of_a_missing_sqlite_file_is_none(tmp_path: Path) -> None:
    assert SQLiteStore(str(tmp_path / "absent.sqlite3")).stored_layout_version() is None


def test_an_unreadable_sqlite_file_raises_store_error_for_its_layout(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="cannot read the layout"):
        SQLiteStore(str(path)).stored_layout_version()


@pytest.mark.redis
def test_an_older_redis_store_refuses_a_newer_layout_and_says_what_to_do(
    redis_store_url: str,
) -> None:
    import redis

    store = open_store(redis_store_url, "/nowhere")
    assert isinstance(store, RedisStore)
    client = redis.Redis.from_url(redis_store_url.split("?")[0])
    try:
        client.set("{" + store.prefix + "}:layout", FUTURE)
        assert store.stored_layout_version() == FUTURE
        with pytest.raises(LayoutError, match=f"layout version {FUTURE}") as info:
            store.begin(make_delivery("k1"), LEASE)
        assert store.prefix in str(info.value)
        assert "pip install -U flask-oa-recall" in str(info.value)
        assert not client.exists("{" + store.prefix + "}:all")
    finally:
        client.close()
        store.close()


# -- SQLite layout 1 (0.1.0) to 2 ----------------------------------------------------------------

#: 0.1.0's schema, verbatim: layout 1 has no version record.
LAYOUT_1 = """
CREATE TABLE oa_recall_deliveries (
    id TEXT PRIMARY KEY, received_at REAL NOT NULL, updated_at REAL NOT NULL,
    sdk_app_id INTEGER NOT NULL, command TEXT NOT NULL, query TEXT NOT NULL, body TEXT NOT NULL,
    official_account TEXT, msg_keys TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, receivers TEXT NOT NULL, last_error TEXT,
    lease_until REAL NOT NULL
);
CREATE INDEX oa_recall_deliveries_status ON oa_recall_deliveries (status, received_at);
CREATE INDEX oa_recall_deliveries_received ON oa_recall_deliveries (received_at);
CREATE TABLE oa_recall_messages (
    sdk_app_id INTEGER NOT NULL, official_account TEXT NOT NULL, msg_key TEXT NOT NULL,
    done INTEGER NOT NULL, owner TEXT, lease_until REAL NOT NULL,
    receivers_done TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (sdk_app_id, official_account, msg_key)
) WITHOUT ROWID;
CREATE TABLE oa_recall_meta (key TEXT PRIMARY KEY, value TEXT);
"""


def make_layout_1(path: Path) -> dict[str, str]:
    """A layout-1 file as 0.1.0 left it: one done, one failed, one interrupted delivery."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(LAYOUT_1)
    rows = {
        "done": ("done", 10.0, '{"messages_recalled:a": "ok"}', "m1", 1, None, '["m_r:a"]'),
        "failed": ("failed", 20.0, '{"messages_recalled:a": "failed"}', "m2", 0, None, "[]"),
        "pending": ("pending", 30.0, "{}", "m3", 0, "pending-id", "[]"),
    }
    ids = {}
    for name, (status, at, receivers, key, done, owner, names) in rows.items():
        ids[name] = delivery_id = f"{int(at * 1000):012x}{name}"
        if owner:
            owner = delivery_id
        conn.execute(
            "INSERT INTO oa_recall_deliveries VALUES (?, ?, ?, 1400000000, ?, '{}', '{}', ?, ?,"
            " ?, 1, ?, NULL, 0)",
            (
                delivery_id,
                at,
                at,
                "OfficialAccount.CallbackAfterMsgWithDraw",
                "@TOA#_x",
                json.dumps([key]),
                status,
                receivers,
            ),
        )
        conn.execute(
            "INSERT INTO oa_recall_messages VALUES (1400000000, '@TOA#_x', ?, ?, ?, 0, ?, ?)",
            (key, done, owner, names, at),
        )
    conn.commit()
    conn.close()
    return ids


def test_a_layout_1_sqlite_file_is_migrated_in_place_keeping_everything(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    ids = make_layout_1(path)
    store = SQLiteStore(str(path))
    assert store.stored_layout_version() == 1

    listed = store.deliveries()  # opening the file migrates it
    assert store.stored_layout_version() == 2
    assert [d.id for d in listed] == [ids["pending"], ids["failed"], ids["done"]]
    assert [d.id for d in store.deliveries(statuses=["failed"])] == [ids["failed"]]
    conn = sqlite3.connect(path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "oa_recall_deliveries_status" not in names
    assert "oa_recall_deliveries_received" not in names
    assert "oa_recall_deliveries_v2" not in names
    # What 0.1.0 kept still works: dedup of a done message, replay of the failed one.
    claim = store.begin(make_delivery("m1", official_account="@TOA#_x"), LEASE)
    assert claim.done == ("m1",)
    kept, again = store.resume(ids["failed"], LEASE)
    assert kept.attempts == 2
    assert set(again.owned) == {"m2"}
    store.finish(
        ids["failed"],
        again,
        Outcome(
            status="done",
            receivers={"messages_recalled:a": "ok"},
            succeeded={"m2": frozenset({"messages_recalled:a"})},
        ),
    )
    done = store.get(ids["failed"])
    assert done is not None
    assert done.status == "done"
    assert done.receivers == {"messages_recalled:a": "ok"}
    store.close()


def test_a_read_only_layout_1_file_stays_readable_unmigrated(tmp_path: Path) -> None:
    from tests.test_store import _readonly

    path = tmp_path / "old.sqlite3"
    ids = make_layout_1(path)
    _readonly(path)
    store = SQLiteStore(str(path))
    assert [d.id for d in store.deliveries()] == [ids["pending"], ids["failed"], ids["done"]]
    assert store.stored_layout_version() == 1
    store.close()


def _open_layout_1(path: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = SQLiteStore(path)
    try:
        results.put(("ok", len(store.deliveries())))
    except StoreError as err:
        results.put(("error", str(err)))
    finally:
        store.close()


def test_workers_opening_a_layout_1_file_together_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    make_layout_1(path)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    processes = [ctx.Process(target=_open_layout_1, args=(str(path), results)) for _ in range(6)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert outcomes == [("ok", 3)] * 6
    assert SQLiteStore(str(path)).stored_layout_version() == 2
