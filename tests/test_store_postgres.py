"""What only the PostgreSQL store has: its URL options, its tables and layout version, its
pool across ``fork``, its round trips, and errors that never show the password.

The shared promises (claims, leases, replay, prune) are in ``tests/test_store.py``. Every test
here that reaches a server uses the ``test`` database with a schema of its own, dropped after.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from flask_oa_recall import StoreError
from flask_oa_recall.errors import ConfigError, LayoutError
from flask_oa_recall.store import Claim, DeliveryBusy, NewDelivery, Outcome, open_store
from flask_oa_recall.store.postgres import LAYOUT_VERSION, PostgresStore
from tests.servers import postgres_schema

pytestmark = pytest.mark.postgres

LEASE = 60.0
SECRET = "s3cret-Pw"


def delivery(*keys: str, **changes: Any) -> NewDelivery:
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "received_at": time.time(),
        "sdk_app_id": 1400000000,
        "command": "OfficialAccount.CallbackAfterMsgWithDraw",
        "query": {"SdkAppid": "1400000000"},
        "body": "{}",
        "official_account": "@TOA#_pg",
        "msg_keys": keys,
    }
    return NewDelivery(**{**fields, **changes})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def schema_url(postgres_url: str) -> Iterator[str]:
    with postgres_schema(postgres_url, "oa_pg_specific") as url:
        yield url


@pytest.fixture
def store(schema_url: str) -> Iterator[PostgresStore]:
    opened = open_store(schema_url, "/nowhere")
    assert isinstance(opened, PostgresStore)
    yield opened
    opened.close()


def admin(schema_url: str) -> psycopg.Connection[Any]:
    """A plain connection to the test database (the store's own options taken out)."""
    return psycopg.connect(schema_url.split("?")[0], autocommit=True)


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "where", "schema", "prefix"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/test",
            "127.0.0.1:5432/test",
            "public",
            "oa_recall_",
        ),
        (
            "postgres://db.internal/app?schema=deliveries",
            "db.internal:5432/app",
            "deliveries",
            "oa_recall_",
        ),
        (
            "postgresql://u:pw@db:6432/app?table_prefix=oa_&sslmode=require",
            "db:6432/app",
            "public",
            "oa_",
        ),
        ("postgresql:///app?host=/run/postgresql", "/run/postgresql/app", "public", "oa_recall_"),
        (
            "postgresql://db/app?schema=My%20Schema&pool_max_size=8&pool_timeout=0.5"
            "&statement_timeout=800",
            "db:5432/app",
            "My Schema",
            "oa_recall_",
        ),
    ],
    ids=[
        "plain",
        "postgres-scheme-with-schema",
        "prefix-and-libpq-option",
        "unix-socket",
        "quoted-schema-and-pool-options",
    ],
)
def test_urls_are_parsed_without_connecting(url: str, where: str, schema: str, prefix: str) -> None:
    store = open_store(url, "/nowhere")
    assert isinstance(store, PostgresStore)
    assert (store.schema, store.table_prefix) == (schema, prefix)
    assert where in repr(store)
    assert "pw" not in store.url.replace("postgresql", "")
    store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://h/db?no_such_option=1", "invalid URI query parameter"),
        ("postgresql://h/db?schema=a&schema=b", "'schema' twice"),
        ("postgresql://h/db?schema=", "schema '' must be 1 to 63 bytes"),
        ("postgresql://h/db?table_prefix=1abc", "table_prefix '1abc' must be"),
        ("postgresql://h/db?table_prefix=a-b", "table_prefix 'a-b' must be"),
        ("postgresql://h/db?pool_timeout=soon", "pool_timeout='soon' must be a number"),
        ("postgresql://h/db?pool_timeout=0", "pool_timeout='0' must be a number"),
        ("postgresql://h/db?pool_min_size=5&pool_max_size=2", "pool_max_size='2'"),
        ("postgresql://h/db?statement_timeout=-1", "statement_timeout='-1'"),
        ("postgresql://h/db?connect_timeout=x", "bad value for connect_timeout"),
    ],
    ids=[
        "unknown-option",
        "schema-twice",
        "empty-schema",
        "prefix-digit-first",
        "prefix-dash",
        "timeout-not-a-number",
        "timeout-zero",
        "pool-max-below-min",
        "negative-statement-timeout",
        "bad-connect-timeout",
    ],
)
def test_bad_urls_are_refused_at_start_up_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="PostgreSQL store") as info:
        open_store(url, "/nowhere")
    assert message in str(info.value)
    assert info.value.key == "OA_RECALL_STORE"


def test_a_malformed_url_is_refused_without_echoing_the_password() -> None:
    url = f"postgresql://u:{SECRET}@[::1/db"
    with pytest.raises(ValueError, match="IPv6") as info:
        open_store(url, "/nowhere")
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="IPv6") as info:
        PostgresStore(url)
    assert SECRET not in str(info.value)
    # libpq quotes the whole URL in its own parse errors: the store cuts it out.
    with pytest.raises(ConfigError, match="not valid") as info:
        PostgresStore(f"postgresql://u:{SECRET}@[::1]x/db")
    assert SECRET not in str(info.value)


# -- errors never show the password --------------------------------------------------------------


def test_errors_and_logs_name_the_server_but_never_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = closed_port()
    store = open_store(
        f"postgresql://app:{SECRET}@127.0.0.1:{port}/db?pool_timeout=0.3", "/nowhere"
    )
    assert store.url == f"postgresql://app:***@127.0.0.1:{port}/db?pool_timeout=0.3"
    calls = {
        "ping": lambda: store.ping(),
        "begin": lambda: store.begin(delivery("k1"), LEASE),
        "get": lambda: store.get("x"),
        "deliveries": lambda: store.deliveries(),
        "prune": lambda: store.prune(before=0),
        "resume": lambda: store.resume("x", LEASE),
        "finish": lambda: store.finish("x", Claim(), Outcome(status="done")),
        "stored_layout_version": lambda: store.stored_layout_version(),
    }
    with caplog.at_level(logging.DEBUG):
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreError) as info:
                call()
            # Bounded by pool_timeout, far inside Tencent's 2 s (a generous bound: shared CPU).
            assert time.monotonic() - started < 2.0, name
            assert f"127.0.0.1:{port}/db" in str(info.value)
            assert SECRET not in str(info.value)
        store.close()
    assert caplog.records, "the pool's connection failures are logged"
    assert all(SECRET not in record.getMessage() for record in caplog.records)


# -- tables and layout ---------------------------------------------------------------------------


def test_tables_are_created_in_the_schema_with_the_layout_version(
    store: PostgresStore, schema_url: str
) -> None:
    assert store.stored_layout_version() is None  # reads only: nothing made yet
    store.ping()
    assert store.stored_layout_version() == LAYOUT_VERSION == PostgresStore.layout_version == 1
    with admin(schema_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
            [store.schema],
        ).fetchall()
        version = conn.execute(
            f'SELECT value FROM "{store.schema}".oa_recall_meta WHERE key = %s',
            ["layout_version"],
        ).fetchone()
    assert [t for (t,) in tables] == [
        "oa_recall_deliveries",
        "oa_recall_messages",
        "oa_recall_meta",
    ]
    assert version == ("1",)


def test_two_table_prefixes_in_one_schema_are_separate_stores(schema_url: str) -> None:
    one = open_store(f"{schema_url}&table_prefix=one_", "/nowhere")
    two = open_store(f"{schema_url}&table_prefix=two_", "/nowhere")
    first = delivery("k1")
    claim = one.begin(first, LEASE)
    one.finish(first.id, claim, Outcome(status="done", succeeded={"k1": frozenset()}))
    assert set(two.begin(delivery("k1"), LEASE).owned) == {"k1"}
    assert two.get(first.id) is None
    assert [d.id for d in one.deliveries()] == [first.id]
    one.close()
    two.close()


def test_a_newer_layout_is_refused_clearly_by_every_call(
    store: PostgresStore, schema_url: str
) -> None:
    store.ping()
    with admin(schema_url) as conn:
        conn.execute(
            f"UPDATE \"{store.schema}\".oa_recall_meta SET value = '2' WHERE key = 'layout_version'"
        )
    # A process that opens the store now (a restarted worker, the CLI) refuses it.
    fresh = open_store(schema_url, "/nowhere")
    for call in (
        lambda: fresh.begin(delivery("k1"), LEASE),
        lambda: fresh.get("x"),
        lambda: fresh.deliveries(),
        lambda: fresh.ping(),
    ):
        with pytest.raises(LayoutError, match="layout version 2") as info:
            call()
        assert "upgrade" in str(info.value).lower()
    assert fresh.stored_layout_version() == 2  # still readable, for `check`
    # A process that checked the layout before: its next ping checks again.
    with pytest.raises(LayoutError):
        store.ping()
    fresh.close()


@pytest.mark.parametrize(
    "change",
    [
        "DELETE FROM {meta}",
        "UPDATE {meta} SET value = 'one' WHERE key = 'layout_version'",
        "UPDATE {meta} SET value = '0' WHERE key = 'layout_version'",
    ],
    ids=["no-version-row", "not-a-number", "version-0"],
)
def test_tables_without_a_layout_version_this_package_knows_are_refused(
    store: PostgresStore, schema_url: str, change: str
) -> None:
    store.ping()
    with admin(schema_url) as conn:
        conn.execute(change.format(meta=f'"{store.schema}".oa_recall_meta'))
    fresh = open_store(schema_url, "/nowhere")
    with pytest.raises(LayoutError, match="another schema or table_prefix"):
        fresh.begin(delivery("k1"), LEASE)
    assert fresh.stored_layout_version() == 0
    fresh.close()


def test_tables_dropped_under_a_running_store_are_made_again(
    store: PostgresStore, schema_url: str
) -> None:
    store.ping()
    with admin(schema_url) as conn:
        conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
    with pytest.raises(StoreError, match="UndefinedTable"):
        store.begin(delivery("k1"), LEASE)
    assert set(store.begin(delivery("k1"), LEASE).owned) == {"k1"}


# -- text PostgreSQL cannot hold as is -----------------------------------------------------------


def test_nul_and_backslashes_survive_in_every_text_field(store: PostgresStore) -> None:
    odd = "a\x00b\\0c\\\\"
    kept = delivery(odd, "plain", official_account=odd, body=odd, command=odd)
    claim = store.begin(kept, LEASE)
    assert set(claim.owned) == {odd, "plain"}
    store.finish(
        kept.id,
        claim,
        Outcome(status="failed", receivers={"r": "failed"}, failed=frozenset({odd}), error=odd),
    )
    got = store.get(kept.id)
    assert got is not None
    assert (got.official_account, got.body, got.command, got.last_error) == (odd, odd, odd, odd)
    assert got.msg_keys == (odd, "plain")
    again = store.begin(delivery(odd, "plain", official_account=odd), LEASE)
    assert (set(again.owned), again.done) == ({odd}, ("plain",))


def test_a_text_the_database_cannot_encode_is_a_store_error(store: PostgresStore) -> None:
    with pytest.raises(StoreError, match="UnicodeEncodeError"):
        store.begin(delivery("lone-\ud800-surrogate"), LEASE)


# -- round trips and the server's clock ----------------------------------------------------------


def test_begin_and_finish_are_one_statement_each(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = delivery("k0")
    store.finish(warm.id, store.begin(warm, LEASE), Outcome(status="done"))
    sent: list[str] = []
    original = psycopg.Connection.execute

    def counting(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query).split()[0])
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", counting)
    kept = delivery("k1", "k2", "k3")
    claim = store.begin(kept, LEASE)
    store.finish(
        kept.id,
        claim,
        Outcome(status="done", succeeded=dict.fromkeys(claim.owned, frozenset({"r"}))),
    )
    assert sent == ["WITH", "WITH"]


def test_leases_are_judged_by_the_servers_clock(store: PostgresStore) -> None:
    kept = delivery("k1")
    store.begin(kept, LEASE)
    got = store.get(kept.id)
    assert got is not None
    with store._connection("read the clock") as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    assert got.updated_at <= row[0]
    assert got.lease_until == pytest.approx(got.updated_at + LEASE)


# -- fork ----------------------------------------------------------------------------------------


def test_a_store_used_before_fork_opens_a_pool_of_its_own_in_the_child(
    store: PostgresStore,
) -> None:
    store.ping()  # the parent holds a pool with a connection
    parent_pool = store._pool
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (the pool's); forking is the
        # point here: gunicorn --preload forks its workers after the app was created.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            claim = store.begin(delivery("child-key"), LEASE)
            code = 0 if set(claim.owned) == {"child-key"} and store._pool is not parent_pool else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    try:
        assert os.read(read, 1) == bytes([0])
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert store._pool is parent_pool
    store.ping()  # the parent's connections still work
    assert [d.msg_keys for d in store.deliveries()] == [("child-key",)]


# -- connections the server dropped, rows another replay holds -----------------------------------


def test_a_connection_the_server_ended_is_replaced_without_an_error(
    store: PostgresStore, schema_url: str
) -> None:
    store.ping()
    with store._connection("find its backend") as conn:
        pid = conn.info.backend_pid
    with admin(schema_url) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
    time.sleep(0.2)  # the server's goodbye reaches the idle connection's socket
    assert set(store.begin(delivery("k1"), LEASE).owned) == {"k1"}
    with store._connection("find its backend") as conn:
        assert conn.info.backend_pid != pid


def test_an_idle_connection_with_a_notification_waiting_is_kept(
    store: PostgresStore, schema_url: str
) -> None:
    with store._connection("listen") as conn:
        pid = conn.info.backend_pid
        conn.execute("LISTEN oa_recall_test")
    with admin(schema_url) as conn:
        conn.execute("NOTIFY oa_recall_test")
    time.sleep(0.2)
    assert store.get("x") is None
    with store._connection("find its backend") as conn:
        assert conn.info.backend_pid == pid


def test_resume_of_a_delivery_another_replay_holds_is_busy_not_waited_for(
    store: PostgresStore, schema_url: str
) -> None:
    kept = delivery("k1")
    store.finish(
        kept.id, store.begin(kept, LEASE), Outcome(status="failed", failed=frozenset({"k1"}))
    )
    with admin(schema_url) as conn, conn.transaction():
        conn.execute(
            f'SELECT 1 FROM "{store.schema}".oa_recall_deliveries WHERE id = %s FOR UPDATE',
            [kept.id],
        )
        with pytest.raises(DeliveryBusy):
            store.resume(kept.id, LEASE)
    again, claim = store.resume(kept.id, LEASE)
    assert (again.attempts, set(claim.owned)) == (2, {"k1"})
