"""Every store records the version of its layout; an older package refuses a newer layout."""

from __future__ import annotations

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
