"""``flask oa-recall check`` on every store: the store in force (never its password) and the
layout version it holds against the one this package reads and writes."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from flask import Flask

from flask_oa_recall.state import get_state
from flask_oa_recall.store import MemoryStore, Outcome, SQLiteStore, Store, open_store
from flask_oa_recall.store.postgres import PostgresStore
from flask_oa_recall.store.redis import RedisStore
from tests import test_store as suite
from tests.conftest import POSTGRES_URL, AppFactory

# The conformance suite's fixtures: an empty store URL of each backend.
store_url = suite.store_url
redis_store_url = suite.redis_store_url
postgres_store_url = suite.postgres_store_url

SECRET = "s3cret-Pw"


def check(app: Flask) -> Result:
    return app.test_cli_runner().invoke(args=["oa-recall", "check"])


def rows(result: Result, topic: str) -> list[tuple[str, str]]:
    found = []
    for line in result.output.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] == topic:
            found.append((parts[0], parts[2]))
    return found


@pytest.fixture
def app(make_app: AppFactory, store_url: str) -> Iterator[Flask]:
    app = make_app(store=store_url)
    yield app
    get_state(app).close()


def app_store(app: Flask) -> Store:
    state = get_state(app)
    return state.store(state.settings(app.config))


def test_check_reports_the_layout_version_of_every_store(app: Flask) -> None:
    store = app_store(app)
    kept = suite.make_delivery("k1")
    store.finish(kept.id, store.begin(kept, suite.LEASE), Outcome(status="done"))
    result = check(app)
    assert result.exit_code == 0, result.output
    supported = app_store(app).layout_version
    assert rows(result, "layout") == [
        ("OK", f"version {supported} (this flask-oa-recall reads and writes {supported})")
    ]


def write_future_layout(store: Store, version: int) -> None:
    """Record ``version`` in ``store`` the way its backend does, as a newer package would."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO oa_recall_meta VALUES ('layout_version', ?)", (version,)
            )
    elif isinstance(store, RedisStore):
        import redis

        client = redis.Redis.from_url(store.url.split("?")[0])
        client.set("{" + store.prefix + "}:layout", version)
        client.close()
    else:
        assert isinstance(store, PostgresStore)
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                f'UPDATE "{store.schema}".oa_recall_meta SET value = %s'
                " WHERE key = 'layout_version'",
                [str(version)],
            )


def test_check_fails_on_a_layout_newer_than_this_package(
    make_app: AppFactory, store_url: str, tmp_path: Path
) -> None:
    store = open_store(store_url, str(tmp_path / "instance"))
    if isinstance(store, MemoryStore):
        pytest.skip("a memory store holds no layout but this process's own")
    kept = suite.make_delivery("k1")
    store.finish(kept.id, store.begin(kept, suite.LEASE), Outcome(status="done"))
    store.close()
    write_future_layout(store, 99)
    fresh = make_app(store=store_url)  # a process that opens the store now
    result = check(fresh)
    get_state(fresh).close()
    assert result.exit_code == 1
    (store_row,) = rows(result, "store")
    # SQLite and PostgreSQL check the layout in ping too; Redis only before it writes.
    assert store_row[0] == "OK" if isinstance(store, RedisStore) else "LayoutError" in store_row[1]
    assert rows(result, "layout") == [
        (
            "FAIL",
            f"version 99, newer than layout {type(store).layout_version} that this"
            " flask-oa-recall reads: a newer version wrote it. Upgrade flask-oa-recall on this"
            " host.",
        )
    ]


@pytest.mark.postgres
def test_check_shows_the_postgres_store_without_its_password(
    make_app: AppFactory, postgres_store_url: str
) -> None:
    # The test server trusts local connections, so a password in the URL is never asked for.
    url = postgres_store_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    app = make_app(store=url)
    result = check(app)
    get_state(app).close()
    assert result.exit_code == 0, result.output
    (store,) = rows(result, "store")
    assert store == ("OK", f"{url.replace(SECRET, '***')} (read and written)")
    assert rows(result, "layout") == [("OK", "version 1 (this flask-oa-recall reads and writes 1)")]
    assert SECRET not in result.output


def test_check_of_an_unreachable_postgres_never_shows_its_password(
    make_app: AppFactory, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = make_app(store=f"postgresql://app:{SECRET}@127.0.0.1:{port}/db?pool_timeout=0.2")
    result = check(app)
    get_state(app).close()
    assert result.exit_code == 1
    (store,) = rows(result, "store")
    assert store[0] == "FAIL"
    assert f"postgresql://app:***@127.0.0.1:{port}/db" in store[1]
    assert "cannot be read and written (StoreError: PostgreSQL store at" in store[1]
    assert rows(result, "layout") == []
    assert SECRET not in result.output


@pytest.mark.redis
def test_check_of_a_redis_prefix_that_kept_nothing_yet_says_so(
    make_app: AppFactory, redis_store_url: str
) -> None:
    app = make_app(store=redis_store_url)
    result = check(app)
    get_state(app).close()
    assert result.exit_code == 0, result.output
    assert rows(result, "layout") == [("OK", "nothing kept yet; this version writes layout 1")]
