"""``postgresql://``: deliveries kept in PostgreSQL, shared by every worker on every host.

Tables (``S`` is the schema, ``public`` unless the URL says ``?schema=...``; ``P`` the table
prefix, ``oa_recall_`` unless it says ``?table_prefix=...``):

- ``S.Pdeliveries``: one row per delivery;
- ``S.Pmessages``: one row per recalled message (SdkAppid, Official_Account, MsgKey) with its
  claim (``owner``, ``lease_until``) and the receivers that succeeded for it;
- ``S.Pmeta``: ``layout_version`` (see :data:`LAYOUT_VERSION`) and ``pinged_at``.

``begin`` and ``finish`` are one SQL statement each (one round trip, one transaction): the
delivery row and the message claims are written together with ``INSERT ... ON CONFLICT DO
UPDATE``, which locks each message row, so two hosts claiming one message get one owner.
Message rows are always written in MsgKey order, so two deliveries of the same keys in another
order cannot deadlock. ``resume`` locks the delivery row with ``FOR UPDATE SKIP LOCKED``: a
delivery another replay is resuming right now is busy, not waited for. Leases are judged by
the server's clock (``clock_timestamp()``), the one clock every host shares.

Text columns hold the text with each backslash doubled and each NUL as ``\\0``, because
PostgreSQL's ``text`` cannot hold NUL and a MsgKey may (``"\\u0000"`` in the JSON body).

Needs PostgreSQL 12 or later and the ``postgres`` extra (``psycopg`` 3 and ``psycopg_pool``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import threading
import weakref
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, timeout_from_conninfo
from psycopg_pool import ConnectionPool

from ..errors import ConfigError, LayoutError, StoreError, UnknownDelivery
from .base import (
    Claim,
    Delivery,
    DeliveryBusy,
    DeliveryStatus,
    NewDelivery,
    Outcome,
    newer_layout,
)
from .url import redact_url

__all__ = [
    "DEFAULT_SCHEMA",
    "DEFAULT_TABLE_PREFIX",
    "LAYOUT_VERSION",
    "PostgresStore",
]

logger = logging.getLogger(__name__)

#: The version of the table layout this package writes. Raised only when the tables change in
#: a way an older package would misread; see docs/upgrading.rst for the policy.
LAYOUT_VERSION = 1

DEFAULT_SCHEMA = "public"
DEFAULT_TABLE_PREFIX = "oa_recall_"

#: The store's own URL options, with their defaults; every other option goes to libpq.
STORE_OPTIONS: Mapping[str, str] = {
    "schema": DEFAULT_SCHEMA,
    "table_prefix": DEFAULT_TABLE_PREFIX,
    # Connections each worker process may open, and keeps open when idle.
    "pool_max_size": "4",
    "pool_min_size": "1",
    # How long a request waits for a connection (a dead server must not eat Tencent's 2 s).
    "pool_timeout": "1.0",
    # Milliseconds one statement may run on the server.
    "statement_timeout": "1500",
}

#: libpq options set unless the URL gives them: a connection attempt gives up after 2 s
#: (libpq's minimum; a request waits at most ``pool_timeout`` for it anyway), and a link that
#: stops acknowledging is dropped within about 2 s instead of the kernel's 15 minutes.
LIBPQ_DEFAULTS: Mapping[str, str] = {
    "connect_timeout": "2",
    "keepalives": "1",
    "keepalives_idle": "1",
    "keepalives_interval": "1",
    "keepalives_count": "1",
    "tcp_user_timeout": "1500",
    "application_name": "flask-oa-recall",
}

_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}\Z")
_UNESCAPE_RE = re.compile(r"\\(\\|0)")

_COLUMNS = (
    "id, received_at, updated_at, sdk_app_id, command, query, body, official_account,"
    " msg_keys, status, attempts, receivers, last_error, lease_until"
)

_LAYOUT = """
CREATE TABLE IF NOT EXISTS {deliveries} (
    id text PRIMARY KEY,
    received_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    sdk_app_id bigint NOT NULL,
    command text NOT NULL,
    query text NOT NULL,
    body text NOT NULL,
    official_account text,
    msg_keys text NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    receivers jsonb NOT NULL,
    last_error text,
    lease_until double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS {status_index} ON {deliveries} (status, received_at);
CREATE INDEX IF NOT EXISTS {received_index} ON {deliveries} (received_at);
CREATE TABLE IF NOT EXISTS {messages} (
    sdk_app_id bigint NOT NULL,
    official_account text NOT NULL,
    msg_key text NOT NULL,
    done boolean NOT NULL,
    owner text,
    lease_until double precision NOT NULL,
    receivers_done text[] NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (sdk_app_id, official_account, msg_key)
);
CREATE INDEX IF NOT EXISTS {done_index} ON {messages} (updated_at) WHERE done;
CREATE TABLE IF NOT EXISTS {meta} (key text PRIMARY KEY, value text NOT NULL);
"""

_NOW = "now AS MATERIALIZED (SELECT extract(epoch FROM clock_timestamp())::float8 AS t)"

# logic.try_claim in SQL: a message is claimable unless finished or leased by another delivery
# whose lease has not run out. The row is locked either way; RETURNING gives its new state.
_CLAIM = """
INSERT INTO {messages} AS m
    (sdk_app_id, official_account, msg_key, done, owner, lease_until, receivers_done, updated_at)
SELECT %(app)s, %(oa)s, k, false, %(id)s, now.t + %(lease)s, ARRAY[]::text[], now.t
FROM now, unnest(%(keys)s::text[]) AS k
ORDER BY k
ON CONFLICT (sdk_app_id, official_account, msg_key) DO UPDATE SET
    owner = CASE WHEN {claimable} THEN excluded.owner ELSE m.owner END,
    lease_until = CASE WHEN {claimable} THEN excluded.lease_until ELSE m.lease_until END,
    updated_at = CASE WHEN {claimable} THEN excluded.updated_at ELSE m.updated_at END
RETURNING m.msg_key, m.done, m.owner = %(id)s, m.receivers_done
""".replace(
    "{claimable}",
    "(NOT m.done AND (m.owner IS NULL OR m.owner = excluded.owner"
    " OR m.lease_until <= excluded.updated_at))",
)

_BEGIN = f"""
WITH {_NOW},
kept AS (
    INSERT INTO {{deliveries}} ({_COLUMNS})
    SELECT %(id)s, %(received_at)s, now.t, %(app)s, %(command)s, %(query)s, %(body)s,
        %(official_account)s, %(msg_keys)s, 'pending', 1, jsonb_build_object(), NULL,
        now.t + %(lease)s
    FROM now
),
claimed AS ({_CLAIM})
SELECT * FROM claimed
"""

_RECLAIM = f"WITH {_NOW}, claimed AS ({_CLAIM}) SELECT * FROM claimed"

# logic.release and logic.merge_receivers in SQL: receivers that succeeded are added, a message
# none failed for is finished, the claim is released if this delivery still holds it, and a
# receiver's "ok" is never undone by a later failure.
_FINISH = f"""
WITH {_NOW},
d AS (
    UPDATE {{deliveries}} AS d SET
        status = %(status)s,
        receivers = (
            SELECT coalesce(jsonb_object_agg(e.key, CASE WHEN d.receivers -> e.key = '"ok"'
                THEN '"ok"'::jsonb ELSE e.value END), jsonb_build_object())
            FROM jsonb_each(d.receivers || %(receivers)s::jsonb) AS e
        ),
        last_error = %(error)s,
        updated_at = now.t,
        lease_until = 0
    FROM now
    WHERE d.id = %(id)s
    RETURNING d.sdk_app_id, coalesce(d.official_account, '') AS oa
),
released AS (
    INSERT INTO {{messages}} AS m
        (sdk_app_id, official_account, msg_key, done, owner, lease_until, receivers_done,
         updated_at)
    SELECT d.sdk_app_id, d.oa, u.k, NOT u.failed, NULL, 0,
        ARRAY(SELECT jsonb_array_elements_text(u.names::jsonb)), now.t
    FROM d, now, unnest(%(keys)s::text[], %(names)s::text[], %(failed)s::bool[])
        AS u(k, names, failed)
    ORDER BY u.k
    ON CONFLICT (sdk_app_id, official_account, msg_key) DO UPDATE SET
        receivers_done = ARRAY(
            SELECT DISTINCT x FROM unnest(m.receivers_done || excluded.receivers_done) AS x
            ORDER BY x
        ),
        done = m.done OR excluded.done,
        owner = CASE WHEN m.owner = %(id)s THEN NULL ELSE m.owner END,
        lease_until = CASE WHEN m.owner = %(id)s THEN 0 ELSE m.lease_until END,
        updated_at = excluded.updated_at
)
SELECT count(*) FROM d
"""

_PRUNE = """
WITH gone AS (
    DELETE FROM {deliveries} WHERE received_at < %(before)s AND status = ANY(%(statuses)s)
    RETURNING 1
),
forgotten AS (DELETE FROM {messages} WHERE done AND updated_at < %(before)s)
SELECT count(*) FROM gone
"""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _enc(text: str) -> str:
    """``text`` as kept in a ``text`` column: backslashes doubled, NUL as ``\\0``."""
    return text.replace("\\", "\\\\").replace("\x00", "\\0")


def _dec(kept: str) -> str:
    if "\\" not in kept:
        return kept
    return _UNESCAPE_RE.sub(lambda m: "\x00" if m.group(1) == "0" else "\\", kept)


def _dec_optional(kept: str | None) -> str | None:
    return None if kept is None else _dec(kept)


def _row_to_delivery(row: Sequence[Any]) -> Delivery:
    (
        id_,
        received,
        updated,
        app_id,
        command,
        query,
        body,
        oa,
        keys,
        status,
        attempts,
        receivers,
        error,
        lease,
    ) = row
    return Delivery(
        id=id_,
        received_at=received,
        sdk_app_id=app_id,
        command=_dec(command),
        query=json.loads(query),
        body=_dec(body),
        official_account=_dec_optional(oa),
        msg_keys=tuple(json.loads(keys)),
        status=status,
        attempts=attempts,
        receivers=receivers,
        last_error=_dec_optional(error),
        updated_at=updated,
        lease_until=lease,
    )


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """Take the store's own options out of the URL's query; the rest is libpq's."""
    # By hand: the query is all that changes, and libpq reads the rest as it is.
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    options: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in pairs:
        if name in STORE_OPTIONS:
            if name in options:
                raise ConfigError(
                    "OA_RECALL_STORE", f"PostgreSQL store URL gives {name!r} twice; give it once."
                )
            options[name] = value
        else:
            rest.append((name, value))
    return (f"{base}?{urlencode(rest)}" if rest else base), {**STORE_OPTIONS, **options}


def _number(options: Mapping[str, str], name: str, low: float, high: float) -> float:
    raw = options[name]
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(
            "OA_RECALL_STORE",
            f"PostgreSQL store option {name}={raw!r} must be a number from {low:g} to {high:g}.",
        )
    return value


class PostgresStore:
    """Deliveries in PostgreSQL, for apps on several hosts that already run it.

    :param url: ``postgresql://[user[:password]@][host][:port][/dbname][?option=value&...]``
        (``postgres://`` too; libpq's URL form). Options: ``schema`` (default ``public``;
        created when missing), ``table_prefix`` (default ``oa_recall_``), ``pool_min_size``
        (1), ``pool_max_size`` (4), ``pool_timeout`` (seconds a request waits for a
        connection, 1.0), ``statement_timeout`` (milliseconds, 1500); every other option is
        passed to libpq (``sslmode``, ``connect_timeout``, ``host`` for a Unix socket, ...).

    Nothing connects until the store is first used, and each process opens its own pool then:
    a pool made before gunicorn forks its workers is never used by a worker. Statements are
    not retried: ``begin`` whose answer was lost may have been kept.
    """

    layout_version = LAYOUT_VERSION

    def __init__(self, url: str) -> None:
        conninfo, options = _split_url(url)
        try:
            self.url = redact_url(url)
        except ValueError as err:  # urlsplit: "Invalid IPv6 URL"; it never quotes the URL
            raise ConfigError(
                "OA_RECALL_STORE", f"PostgreSQL store URL is not valid: {err}"
            ) from err
        try:
            params = conninfo_to_dict(conninfo)
            timeout_from_conninfo(params)
        except psycopg.ProgrammingError as err:
            detail = str(err).replace(conninfo, "…")  # libpq may quote the URL, password too
            raise ConfigError(
                "OA_RECALL_STORE", f"PostgreSQL store URL {self.url!r} is not valid: {detail}"
            ) from err
        self._password = str(params.get("password") or "") or None
        for name, value in LIBPQ_DEFAULTS.items():
            params.setdefault(name, value)
        self._conninfo_params = params
        self.schema = options["schema"]
        self.table_prefix = options["table_prefix"]
        if not self.schema or len(self.schema.encode()) > 63 or "\x00" in self.schema:
            raise ConfigError(
                "OA_RECALL_STORE",
                f"PostgreSQL store schema {self.schema!r} must be 1 to 63 bytes without NUL.",
            )
        if not _PREFIX_RE.match(self.table_prefix):
            raise ConfigError(
                "OA_RECALL_STORE",
                f"PostgreSQL store table_prefix {self.table_prefix!r} must be a letter or _"
                " followed by at most 39 letters, digits or _.",
            )
        self._min_size = int(_number(options, "pool_min_size", 0, 100))
        self._max_size = int(_number(options, "pool_max_size", max(1, self._min_size), 100))
        self._pool_timeout = _number(options, "pool_timeout", 0.01, 60)
        self._statement_timeout = int(_number(options, "statement_timeout", 0, 3_600_000))
        host = str(params.get("host") or "localhost")
        where = host if host.startswith("/") else f"{host}:{params.get('port') or 5432}"
        self._where = f"{where}/{params.get('dbname') or params.get('user') or '-'}"
        self._sql = self._statements()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._layout_checked = False
        # Pools of the parent process, after a fork: never used, never closed here (closing
        # would end the parent's connections), only kept from the garbage collector.
        self._orphans: list[ConnectionPool[psycopg.Connection[Any]]] = []
        after_fork = weakref.WeakMethod(self._after_fork)

        def in_child() -> None:  # pragma: no cover - runs in forked children only
            method = after_fork()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=in_child)

    def __repr__(self) -> str:
        return f"<PostgresStore {self._where} schema={self.schema!r} prefix={self.table_prefix!r}>"

    def _after_fork(self) -> None:  # pragma: no cover - runs in forked children only
        # The lock may have been held by another thread of the parent at the fork.
        self._lock = threading.Lock()
        if self._pool is not None:
            self._orphans.append(self._pool)
            self._pool = None

    # -- names and statements -------------------------------------------------------------------

    def _table(self, name: str) -> str:
        return f"{_quote(self.schema)}.{_quote(self.table_prefix + name)}"

    def _statements(self) -> dict[str, str]:
        names = {
            "deliveries": self._table("deliveries"),
            "messages": self._table("messages"),
            "meta": self._table("meta"),
            "status_index": _quote(self.table_prefix + "deliveries_status"),
            "received_index": _quote(self.table_prefix + "deliveries_received"),
            "done_index": _quote(self.table_prefix + "messages_done"),
        }
        templates = {
            "layout": _LAYOUT,
            "begin": _BEGIN,
            "reclaim": _RECLAIM,
            "finish": _FINISH,
            "prune": _PRUNE,
            "get": f"SELECT {_COLUMNS} FROM {{deliveries}} WHERE id = %s",
            "lock": f"SELECT {_COLUMNS}, extract(epoch FROM clock_timestamp())::float8"
            " FROM {deliveries} WHERE id = %s FOR UPDATE SKIP LOCKED",
            "exists": "SELECT 1 FROM {deliveries} WHERE id = %s",
            "lease": "UPDATE {deliveries} SET status = 'pending', attempts = attempts + 1,"
            " updated_at = %(now)s, lease_until = %(now)s + %(lease)s WHERE id = %(id)s",
            "list": f"SELECT {_COLUMNS} FROM {{deliveries}}"
            " ORDER BY received_at DESC, id DESC LIMIT %s",
            "list_status": f"SELECT {_COLUMNS} FROM {{deliveries}} WHERE status = ANY(%s)"
            " ORDER BY received_at DESC, id DESC LIMIT %s",
            "version": "SELECT value FROM {meta} WHERE key = 'layout_version'",
            "record_version": "INSERT INTO {meta} (key, value) VALUES ('layout_version', %s)"
            " ON CONFLICT (key) DO NOTHING",
            "ping": "INSERT INTO {meta} (key, value) VALUES ('pinged_at', clock_timestamp()::text)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value RETURNING value",
        }
        return {name: sql.format(**names) for name, sql in templates.items()}

    # -- connections ----------------------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false)", [str(self._statement_timeout)]
        )

    def _get_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    kwargs={**self._conninfo_params, "autocommit": True},
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._pool_timeout,
                    configure=self._configure,
                    # After an outage, give up a reconnection chain soon: the next request
                    # starts a new attempt at once instead of waiting out a long backoff.
                    reconnect_timeout=2.0,
                    name=f"oa-recall-{os.getpid()}",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn every driver error into a :class:`StoreError` naming the server, not secrets."""
        try:
            yield
        except (StoreError, KeyError, DeliveryBusy):
            raise
        except pg_errors.UndefinedTable as err:
            # The tables were dropped: create them again on the next call.
            self._layout_checked = False
            raise self._store_error(what, err) from err
        except (psycopg.Error, UnicodeError) as err:
            raise self._store_error(what, err) from err

    def _store_error(self, what: str, err: BaseException) -> StoreError:
        detail = " ".join(f"{type(err).__name__}: {err}".split())
        if self._password:
            detail = detail.replace(self._password, "***")
        return StoreError(f"PostgreSQL store at {self._where} could not {what}: {detail}")

    @contextmanager
    def _connection(self, what: str, *, layout: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """A live connection from this process's pool; the layout is checked on its first use
        in this process (unless ``layout`` is false)."""
        with self._errors(what):
            pool = self._get_pool()
            conn = pool.getconn()
            while not _looks_alive(conn):
                # The server closed it (a restart, an idle timeout): drop it, take another.
                conn.close()
                pool.putconn(conn)
                conn = pool.getconn()
            try:
                if layout and not self._layout_checked:
                    self._check_layout(conn)
                yield conn
            finally:
                pool.putconn(conn)

    # -- layout ---------------------------------------------------------------------------------

    def _found_version(self, conn: psycopg.Connection[Any]) -> int | None:
        """The layout version the tables record; ``None`` when there are no tables yet."""
        # pg_class, not to_regclass(): a query sees what another host committed while this
        # one waited for the lock; the catalog cache behind to_regclass() may not yet.
        exists = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            [self.schema, self.table_prefix + "meta"],
        ).fetchone()
        if exists is None:
            return None
        row = conn.execute(self._sql["version"]).fetchone()
        try:
            return int(row[0]) if row else 0
        except ValueError:
            return 0

    def _check_layout(self, conn: psycopg.Connection[Any]) -> None:
        """Create the tables when missing; refuse a layout this package cannot use."""
        found = self._found_version(conn)
        if found is None:
            with conn.transaction():
                # Hosts starting together: one creates, the others wait and find it made.
                lock_key = 0x0A2E_C100_0000_0000 | zlib.crc32(
                    f"{self.schema}.{self.table_prefix}".encode()
                )
                conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", [lock_key])
                found = self._found_version(conn)
                if found is None:
                    self._create_layout(conn)
                    found = LAYOUT_VERSION
        self._refuse_unless_current(found)
        self._layout_checked = True

    def _create_layout(self, conn: psycopg.Connection[Any]) -> None:
        schema = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema]
        ).fetchone()
        if schema is None:
            conn.execute(f"CREATE SCHEMA {_quote(self.schema)}")
        for statement in self._sql["layout"].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(self._sql["record_version"], [str(LAYOUT_VERSION)])
        logger.info(
            "Created the delivery tables %s.%s* (layout version %d) at %s.",
            self.schema,
            self.table_prefix,
            LAYOUT_VERSION,
            self._where,
        )

    def _refuse_unless_current(self, found: int) -> None:
        tables = f"{self.schema}.{self.table_prefix}*"
        if found > LAYOUT_VERSION:
            where = f"PostgreSQL store at {self._where} (tables {tables})"
            raise newer_layout(where, found, LAYOUT_VERSION)
        if found < LAYOUT_VERSION:
            raise LayoutError(
                f"PostgreSQL store at {self._where}: tables {tables} record no layout version"
                f" this flask-oa-recall knows (found {found}, expected {LAYOUT_VERSION}), so"
                " they were not made by it. Point OA_RECALL_STORE at another schema or"
                " table_prefix, or drop those tables."
            )

    def stored_layout_version(self) -> int | None:
        """The layout version the tables record (``None``: no tables yet). Reads only."""
        with self._connection("read its layout version", layout=False) as conn:
            return self._found_version(conn)

    # -- the protocol ---------------------------------------------------------------------------

    @staticmethod
    def _claim(
        keys: Sequence[str], rows: Sequence[Sequence[Any]], receivers_ok: frozenset[str]
    ) -> Claim:
        by_key = {_enc(key): key for key in keys}
        verdicts: dict[str, tuple[str, frozenset[str]]] = {}
        for kept_key, done, owned, receivers_done in rows:
            verdict = "done" if done else "owned" if owned else "busy"
            verdicts[by_key[kept_key]] = (verdict, frozenset(receivers_done))
        owned_keys: dict[str, frozenset[str]] = {}
        done_keys: list[str] = []
        busy_keys: list[str] = []
        for key in keys:
            verdict, names = verdicts[key]
            if verdict == "owned":
                owned_keys[key] = names
            else:
                (done_keys if verdict == "done" else busy_keys).append(key)
        return Claim(
            owned=owned_keys,
            done=tuple(done_keys),
            busy=tuple(busy_keys),
            receivers_ok=receivers_ok,
        )

    @staticmethod
    def _claim_params(
        delivery: NewDelivery, keys: Sequence[str], lease_seconds: float
    ) -> dict[str, Any]:
        return {
            "id": delivery.id,
            "app": delivery.sdk_app_id,
            "oa": _enc(delivery.official_account or ""),
            "keys": sorted(_enc(key) for key in keys),
            "lease": float(lease_seconds),
        }

    def begin(self, delivery: NewDelivery, lease_seconds: float) -> Claim:
        """Keep ``delivery`` and claim its messages in one statement (one round trip)."""
        keys = list(dict.fromkeys(delivery.msg_keys))
        params = self._claim_params(delivery, keys, lease_seconds)
        params.update(
            received_at=float(delivery.received_at),
            command=_enc(delivery.command),
            query=json.dumps(dict(delivery.query)),
            body=_enc(delivery.body),
            official_account=(None if delivery.official_account is None else params["oa"]),
            msg_keys=json.dumps(list(delivery.msg_keys)),
        )
        with self._connection(f"keep delivery {delivery.id}") as conn:
            rows = conn.execute(self._sql["begin"], params).fetchall()
        return self._claim(keys, rows, frozenset())

    def resume(self, delivery_id: str, lease_seconds: float) -> tuple[Delivery, Claim]:
        """Lease ``delivery_id`` again for a replay, in one transaction."""
        with (
            self._connection(f"resume delivery {delivery_id}") as conn,
            conn.transaction(),
        ):
            row = conn.execute(self._sql["lock"], [delivery_id]).fetchone()
            if row is None:
                if conn.execute(self._sql["exists"], [delivery_id]).fetchone():
                    raise DeliveryBusy(delivery_id)  # another replay holds its row
                raise UnknownDelivery(delivery_id)
            kept, now = _row_to_delivery(row[:-1]), row[-1]
            if kept.status == DeliveryStatus.PENDING and kept.lease_until > now:
                raise DeliveryBusy(delivery_id)
            conn.execute(
                self._sql["lease"], {"now": now, "lease": float(lease_seconds), "id": delivery_id}
            )
            kept = Delivery(
                **{
                    **vars(kept),
                    "status": DeliveryStatus.PENDING,
                    "attempts": kept.attempts + 1,
                    "updated_at": now,
                    "lease_until": now + lease_seconds,
                },
            )
            keys = list(dict.fromkeys(kept.msg_keys))
            rows = conn.execute(
                self._sql["reclaim"], self._claim_params(kept, keys, lease_seconds)
            ).fetchall()
        ok = frozenset(name for name, result in kept.receivers.items() if result == "ok")
        return kept, self._claim(keys, rows, ok)

    def finish(self, delivery_id: str, claim: Claim, outcome: Outcome) -> None:
        """Record ``outcome`` and release the claims in one statement (one round trip)."""
        keys = sorted(claim.owned)
        params = {
            "id": delivery_id,
            "status": outcome.status,
            "receivers": json.dumps(dict(outcome.receivers)),
            "error": None if outcome.error is None else _enc(outcome.error),
            "keys": [_enc(key) for key in keys],
            "names": [json.dumps(sorted(outcome.succeeded.get(key, ()))) for key in keys],
            "failed": [key in outcome.failed for key in keys],
        }
        with self._connection(f"finish delivery {delivery_id}") as conn:
            row = conn.execute(self._sql["finish"], params).fetchone()
        if not row or not row[0]:
            raise StoreError(f"delivery {delivery_id} vanished from the store")

    def get(self, delivery_id: str) -> Delivery | None:
        """One delivery, or ``None``."""
        with self._connection(f"read delivery {delivery_id}") as conn:
            row = conn.execute(self._sql["get"], [delivery_id]).fetchone()
        return _row_to_delivery(row) if row else None

    def deliveries(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Kept deliveries, newest first, optionally only those with one of ``statuses``."""
        if limit <= 0:
            return []
        with self._connection("list deliveries") as conn:
            if statuses:
                rows = conn.execute(self._sql["list_status"], [list(statuses), limit]).fetchall()
            else:
                rows = conn.execute(self._sql["list"], [limit]).fetchall()
        return [_row_to_delivery(row) for row in rows]

    def prune(self, *, before: float, include_failed: bool = False) -> int:
        """Drop finished deliveries received before ``before``, and finished message states
        last updated before it; return how many deliveries went."""
        statuses = [DeliveryStatus.DONE, DeliveryStatus.DUPLICATE]
        if include_failed:
            statuses.append(DeliveryStatus.FAILED)
        with self._connection("prune") as conn:
            row = conn.execute(
                self._sql["prune"], {"before": float(before), "statuses": statuses}
            ).fetchone()
        return int(row[0]) if row else 0

    def ping(self) -> None:
        """Check the layout again (another host may have migrated it since), then write a row
        and read it back; creates the tables if missing."""
        self._layout_checked = False
        with self._connection("be written and read") as conn:
            row = conn.execute(self._sql["ping"]).fetchone()
        if not row:  # pragma: no cover - RETURNING always gives the row
            raise StoreError(f"PostgreSQL store at {self._where} did not read back its write.")

    def close(self) -> None:
        """Close this process's pool; the store opens a new one if used again."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            with self._errors("close"):
                pool.close(timeout=1.0)


def _looks_alive(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle pooled connection can be used, mostly without a round trip.

    An idle connection has nothing to read; if the server wrote to it (it closed it, or is
    shutting down), one empty query tells for sure.
    """
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if not poller.poll(0):
        return True
    try:
        conn.execute("")
    except psycopg.Error:
        return False
    return True
