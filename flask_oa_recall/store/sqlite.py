"""The default store: one SQLite file (WAL), shared by every worker process on one host."""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ..errors import StoreError, UnknownDelivery
from .base import Claim, Delivery, DeliveryBusy, DeliveryStatus, NewDelivery, Outcome, newer_layout
from .checkpoint import BACKSTOP_PAGES, Checkpointer
from .grouped import PendingOutcomes, report_once
from .logic import MessageState, merge_receivers, release, try_claim

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Layout 2. Deliveries are clustered by id (``WITHOUT ROWID``): one B-tree per insert, and
#: ids sort by arrival. Only failed deliveries are indexed by status (a partial index written
#: when a delivery fails, not on every callback); listing by time or pending status scans.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS oa_recall_deliveries (
    id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sdk_app_id INTEGER NOT NULL,
    command TEXT NOT NULL,
    query TEXT NOT NULL,
    body TEXT NOT NULL,
    official_account TEXT,
    msg_keys TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    receivers TEXT NOT NULL,
    last_error TEXT,
    lease_until REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS oa_recall_deliveries_failed
    ON oa_recall_deliveries (id) WHERE status = 'failed';
CREATE TABLE IF NOT EXISTS oa_recall_messages (
    sdk_app_id INTEGER NOT NULL,
    official_account TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    done INTEGER NOT NULL,
    owner TEXT,
    lease_until REAL NOT NULL,
    receivers_done TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (sdk_app_id, official_account, msg_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS oa_recall_meta (key TEXT PRIMARY KEY, value TEXT);
INSERT OR REPLACE INTO oa_recall_meta VALUES ('layout_version', '2');
"""

#: Layout 1 (0.1.0) to 2, in the one transaction that opens the file: copy the deliveries
#: into a clustered table, drop the old one with its two indexes, record the version.
_MIGRATE_1_TO_2 = """
CREATE TABLE oa_recall_deliveries_v2 (
    id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sdk_app_id INTEGER NOT NULL,
    command TEXT NOT NULL,
    query TEXT NOT NULL,
    body TEXT NOT NULL,
    official_account TEXT,
    msg_keys TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    receivers TEXT NOT NULL,
    last_error TEXT,
    lease_until REAL NOT NULL
) WITHOUT ROWID;
INSERT INTO oa_recall_deliveries_v2 SELECT
    id, received_at, updated_at, sdk_app_id, command, query, body, official_account,
    msg_keys, status, attempts, receivers, last_error, lease_until
FROM oa_recall_deliveries;
DROP TABLE oa_recall_deliveries;
ALTER TABLE oa_recall_deliveries_v2 RENAME TO oa_recall_deliveries;
CREATE INDEX oa_recall_deliveries_failed ON oa_recall_deliveries (id) WHERE status = 'failed';
INSERT OR REPLACE INTO oa_recall_meta VALUES ('layout_version', '2');
"""

#: The schema's last table: when it exists, the whole script has run (it runs in one transaction).
_SCHEMA_PRESENT = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'oa_recall_meta'"

#: Where the layout version is recorded; a schema without the row is 0.1.0's layout, version 1.
_LAYOUT_KEY = "layout_version"


def _script(conn: sqlite3.Connection, script: str, *, only_if_layout: int | None = None) -> None:
    """Run ``script``'s statements in one ``BEGIN IMMEDIATE`` transaction; with
    ``only_if_layout``, only if the file still holds that layout once the lock is taken (another
    process may have migrated it meanwhile)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if only_if_layout is None or _stored_layout(conn) == only_if_layout:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _stored_layout(conn: sqlite3.Connection) -> int | None:
    if not conn.execute(_SCHEMA_PRESENT).fetchone():
        return None
    row = conn.execute("SELECT value FROM oa_recall_meta WHERE key = ?", (_LAYOUT_KEY,)).fetchone()
    return 1 if row is None else int(row[0])


#: A new message, claimed by the delivery that brings it; ignored if the message is kept.
_INSERT_CLAIMED = "INSERT OR IGNORE INTO oa_recall_messages VALUES (?, ?, ?, 0, ?, ?, '[]', ?)"
#: Many new messages claimed in one statement: the MsgKeys come as one JSON array.
_INSERT_CLAIMED_EACH = (
    "INSERT OR IGNORE INTO oa_recall_messages"
    " SELECT ?, ?, value, 0, ?, ?, '[]', ? FROM json_each(?)"
)
#: Release a message still owned, with the receivers it had when claimed (compare-and-set).
_RELEASE_OWNED = (
    "UPDATE oa_recall_messages SET done = ?, owner = NULL, lease_until = 0,"
    " receivers_done = ?, updated_at = ? WHERE sdk_app_id = ? AND official_account = ?"
    " AND msg_key = ? AND owner = ? AND receivers_done = ? AND done = 0"
)
#: :data:`_RELEASE_OWNED` for many messages with the same receivers, given as a JSON array.
_RELEASE_OWNED_EACH = (
    "UPDATE oa_recall_messages SET done = ?, owner = NULL, lease_until = 0,"
    " receivers_done = ?, updated_at = ? WHERE sdk_app_id = ? AND official_account = ?"
    " AND msg_key IN (SELECT value FROM json_each(?)) AND owner = ? AND receivers_done = ?"
    " AND done = 0"
)
#: Finish a delivery no attempt recorded receivers for yet (merging with nothing).
_FINISH_FIRST_ATTEMPT = (
    "UPDATE oa_recall_deliveries SET status = ?, receivers = ?, last_error = ?,"
    " updated_at = ?, lease_until = 0 WHERE id = ? AND receivers = '{}'"
)

_COLUMNS = (
    "id, received_at, updated_at, sdk_app_id, command, query, body, official_account,"
    " msg_keys, status, attempts, receivers, last_error, lease_until"
)
_INSERT_DELIVERY = f"INSERT INTO oa_recall_deliveries ({_COLUMNS}) VALUES ({', '.join('?' * 14)})"


def _row_to_delivery(row: tuple[Any, ...]) -> Delivery:
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
        command=command,
        query=json.loads(query),
        body=body,
        official_account=oa,
        msg_keys=tuple(json.loads(keys)),
        status=status,
        attempts=attempts,
        receivers=json.loads(receivers),
        last_error=error,
        updated_at=updated,
        lease_until=lease,
    )


#: Message states are read this many MsgKeys per query (SQLite bounds the bound parameters).
_KEYS_PER_QUERY = 500


def _message_states(
    conn: sqlite3.Connection, app_id: int, oa: str, keys: Sequence[str]
) -> dict[str, MessageState]:
    """The kept states of those of ``keys`` that have one: one query per 500 keys, not per key."""
    states: dict[str, MessageState] = {}
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = keys[start : start + _KEYS_PER_QUERY]
        rows = conn.execute(
            "SELECT msg_key, done, owner, lease_until, receivers_done FROM oa_recall_messages"
            f" WHERE sdk_app_id = ? AND official_account = ? AND msg_key IN ({_marks(len(chunk))})",
            (app_id, oa, *chunk),
        ).fetchall()
        for key, done, owner, lease_until, names in rows:
            receivers_done = set(json.loads(names)) if names != "[]" else set()
            states[key] = MessageState(bool(done), owner, lease_until, receivers_done)
    return states


@functools.cache
def _has_json_each() -> bool:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT count(*) FROM json_each('[]')")
    except sqlite3.Error:  # pragma: no cover - an SQLite built without JSON
        return False
    finally:
        conn.close()
    return True


def _keys_array(keys: Sequence[str], text: str | None = None) -> str | None:
    """``keys`` as the JSON array that ``json_each`` reads back exactly (``text``, when it is
    already encoded), or ``None`` when one holds a NUL (SQLite's text functions stop at it):
    those go one statement per key."""
    if text is None:
        text = json.dumps(keys)
    return None if "\\u0000" in text else text


def _json_object(mapping: Mapping[str, str]) -> str:
    return json.dumps(mapping if type(mapping) is dict else dict(mapping))


#: No receiver yet: the receivers of a message claimed for the first time.
_NO_NAMES: frozenset[str] = frozenset()


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _names_json(names: AbstractSet[str]) -> str:
    """Receiver names as kept in ``receivers_done``: a sorted JSON list."""
    return _sorted_json(frozenset(names)) if names else "[]"


@functools.lru_cache(maxsize=256)
def _sorted_json(names: frozenset[str]) -> str:
    # Every message of a delivery usually has the same receivers: encode each set once.
    return json.dumps(sorted(names))


@dataclass(slots=True)
class _Finish:
    """One outcome waiting to be recorded (see :meth:`SQLiteStore.finish_soon`)."""

    delivery_id: str
    claim: Claim
    outcome: Outcome
    receivers: str  #: ``outcome.receivers`` as JSON
    at: float
    on_failure: Callable[[StoreError], None] | None = None
    reported: bool = False


class SQLiteStore:
    """Deliveries in a SQLite file.

    Each thread of each process opens its own connection (connections must not cross a fork).
    Writes are ``BEGIN IMMEDIATE`` transactions, so claims are atomic across gunicorn workers;
    WAL with ``synchronous=NORMAL`` survives a killed process, not a power cut.

    :param group_outcomes: an outcome (:meth:`finish`) is recorded in the same transaction as
        the next delivery this process keeps, or by a thread after
        :data:`~flask_oa_recall.store.grouped.GROUP_SECONDS` without one; ``False`` records each
        outcome at once, in a transaction of its own.
    :param background_checkpoints: WAL checkpoints run in a thread of the process
        (:mod:`~flask_oa_recall.store.checkpoint`); ``False`` leaves them to SQLite, in the
        commit that takes the WAL past 1000 pages.
    """

    layout_version = 2

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 10.0,
        group_outcomes: bool = True,
        background_checkpoints: bool = True,
    ) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        #: Whether this SQLite has ``json_each`` (built in since 3.38, usually before).
        self._json_each = _has_json_each()
        self._outcomes: PendingOutcomes[_Finish] | None = (
            PendingOutcomes(self._record_batch, report_once) if group_outcomes else None
        )
        self._checkpointer: Checkpointer | None = None
        if background_checkpoints:
            store = weakref.ref(self)  # the checkpointer must not keep the store alive

            def checkpoint() -> None:
                alive = store()
                if alive is not None:
                    alive._checkpoint()

            self._checkpointer = Checkpointer(checkpoint)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            conn = self._open()
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open SQLite store {self.path}: {err}") from err
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        """A new connection in WAL mode with the schema in place.

        Workers that start together open their connections together, and changing the journal
        mode or creating tables can answer "database is locked" at once instead of waiting, so
        that is retried until the busy timeout.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if self._checkpointer is not None:
                    conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
                # On every new connection, not once per store: the file may have been replaced
                # since (a deleted file, a fresh volume). Only when missing, so that a file that
                # cannot be written can still be read (``flask oa-recall deliveries``).
                if not conn.execute(_SCHEMA_PRESENT).fetchone():
                    _script(conn, _SCHEMA)
                found = _stored_layout(conn)
                if found is not None and found > self.layout_version:
                    conn.close()
                    raise newer_layout(f"SQLite store {self.path}", found, self.layout_version)
                if found == 1:
                    self._migrate(conn)
                return conn
            except sqlite3.OperationalError as err:
                conn.close()
                locked = "locked" in str(err) or "busy" in str(err)
                if not locked or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Layout 1 to 2 in one transaction; a file that cannot be written stays readable."""
        try:
            _script(conn, _MIGRATE_1_TO_2, only_if_layout=1)
        except sqlite3.OperationalError as err:
            if "readonly" not in str(err) and "read-only" not in str(err):
                raise
            # Layout 1 reads the same columns: listing and replay's reads still work.
            logger.warning("SQLite store %s is read-only and keeps layout 1: %s", self.path, err)
        else:
            logger.info("SQLite store %s: layout 1 migrated to layout 2", self.path)

    def _failed(self, err: sqlite3.Error) -> StoreError:
        # A connection that failed may stay broken (one that found the file read-only stays
        # read-only after the file is fixed), so the next call opens a fresh one.
        with suppress(sqlite3.Error):
            self._drop_connection()
        return StoreError(f"SQLite store {self.path}: {err}")

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._connect())
        except sqlite3.Error as err:
            raise self._failed(err) from err

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._begin_immediate()
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as err:
            self._roll_back(conn, err)
        self._committed()

    def _committed(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def _checkpoint(self) -> None:
        """One ``PASSIVE`` WAL checkpoint on this thread's connection (the checkpointer's)."""
        self._read(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    def _begin_immediate(self) -> sqlite3.Connection:
        """This thread's connection, inside a new ``BEGIN IMMEDIATE`` transaction."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise self._failed(err) from err
        return conn

    def _roll_back(self, conn: sqlite3.Connection, err: BaseException) -> NoReturn:
        """Roll the transaction back after ``err`` and raise (a :class:`StoreError` for an
        SQLite error, else ``err`` itself)."""
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(err, sqlite3.Error):
            raise self._failed(err) from err
        raise err

    def _claim(
        self,
        conn: sqlite3.Connection,
        delivery: NewDelivery,
        receivers_ok: frozenset[str],
        now: float,
        lease_seconds: float,
        *,
        fresh: bool = False,
        keys_json: str | None = None,
    ) -> Claim:
        oa = delivery.official_account or ""
        keys = delivery.msg_keys
        scope = (delivery.sdk_app_id, oa)
        if fresh and keys:
            # A new delivery's messages are almost always new too: insert them claimed, and
            # read the kept states only when some already existed.
            lease_until = now + lease_seconds
            array = _keys_array(keys, keys_json) if len(keys) > 1 and self._json_each else None
            if len(keys) == 1:
                row = (delivery.sdk_app_id, oa, keys[0], delivery.id, lease_until, now)
                inserted = conn.execute(_INSERT_CLAIMED, row).rowcount
            elif array is not None:
                each = (delivery.sdk_app_id, oa, delivery.id, lease_until, now, array)
                inserted = conn.execute(_INSERT_CLAIMED_EACH, each).rowcount
            else:
                rows = [(delivery.sdk_app_id, oa, k, delivery.id, lease_until, now) for k in keys]
                inserted = conn.executemany(_INSERT_CLAIMED, rows).rowcount
            if inserted == len(keys):
                new = dict.fromkeys(keys, _NO_NAMES)
                return Claim(owned=new, receivers_ok=receivers_ok, scope=scope)
        owned: dict[str, frozenset[str]] = {}
        done: list[str] = []
        busy: list[str] = []
        states = _message_states(conn, delivery.sdk_app_id, oa, keys)
        claimed = []
        for key in keys:
            state = states.get(key)
            if state is None:
                state = states[key] = MessageState()
            verdict = try_claim(state, delivery.id, now, lease_seconds)
            if verdict == "owned":
                owned[key] = frozenset(state.receivers_done)
                claimed.append(
                    (
                        delivery.sdk_app_id,
                        oa,
                        key,
                        0,
                        delivery.id,
                        state.lease_until,
                        _names_json(state.receivers_done),
                        now,
                    )
                )
            else:
                (done if verdict == "done" else busy).append(key)
        if claimed:
            conn.executemany(
                "INSERT OR REPLACE INTO oa_recall_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                claimed,
            )
        return Claim(
            owned=owned, done=tuple(done), busy=tuple(busy), receivers_ok=receivers_ok, scope=scope
        )

    def begin(self, delivery: NewDelivery, lease_seconds: float) -> Claim:
        """Keep ``delivery`` and claim its messages in one transaction."""
        now = time.time()
        keys_json = json.dumps(delivery.msg_keys)
        conn, pending = self._begin_with_held()
        try:
            conn.execute(
                _INSERT_DELIVERY,
                (
                    delivery.id,
                    delivery.received_at,
                    now,
                    delivery.sdk_app_id,
                    delivery.command,
                    _json_object(delivery.query),
                    delivery.body,
                    delivery.official_account,
                    keys_json,
                    DeliveryStatus.PENDING,
                    1,
                    "{}",
                    None,
                    now + lease_seconds,
                ),
            )
            claim = self._claim(
                conn, delivery, _NO_NAMES, now, lease_seconds, fresh=True, keys_json=keys_json
            )
            conn.execute("COMMIT")
        except BaseException as err:
            self._give_back(pending)
            self._roll_back(conn, err)
        self._committed()
        return claim

    def _begin_with_held(self) -> tuple[sqlite3.Connection, list[_Finish]]:
        """A new ``BEGIN IMMEDIATE`` transaction that has recorded the outcomes
        :meth:`finish_soon` held back; they are held again if it fails (roll back the
        transaction with :meth:`_give_back` and :meth:`_roll_back`)."""
        pending = self._outcomes.take() if self._outcomes is not None else []
        try:
            conn = self._begin_immediate()
        except StoreError:
            self._give_back(pending)
            raise
        if pending:
            try:
                self._record_each(conn, pending)
            except BaseException as err:
                self._give_back(pending)
                self._roll_back(conn, err)
        return conn, pending

    def _give_back(self, pending: list[_Finish]) -> None:
        if pending and self._outcomes is not None:
            self._outcomes.give_back(pending)

    def _record_each(self, conn: sqlite3.Connection, pending: list[_Finish]) -> None:
        """Record outcomes held back by :meth:`finish`, inside the caller's transaction."""
        for held in pending:
            try:
                self._record(
                    conn, held.delivery_id, held.claim, held.outcome, held.receivers, held.at
                )
            except StoreError as err:  # the delivery was pruned meanwhile: nothing to record
                logger.warning("outcome of delivery %s not recorded: %s", held.delivery_id, err)

    def _record_batch(self, pending: list[_Finish]) -> None:
        """Record held-back outcomes in a transaction of their own."""
        conn = self._begin_immediate()
        try:
            self._record_each(conn, pending)
            conn.execute("COMMIT")
        except BaseException as err:
            self._roll_back(conn, err)
        self._committed()

    def _flush(self) -> None:
        """Record what :meth:`finish` held back, so that this process reads its own writes."""
        if self._outcomes is not None:
            self._outcomes.flush()

    def resume(self, delivery_id: str, lease_seconds: float) -> tuple[Delivery, Claim]:
        """Lease ``delivery_id`` again for a replay."""
        self._flush()
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM oa_recall_deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            if row is None:
                raise UnknownDelivery(delivery_id)
            kept = _row_to_delivery(row)
            if kept.status == DeliveryStatus.PENDING and kept.lease_until > now:
                raise DeliveryBusy(delivery_id)
            conn.execute(
                "UPDATE oa_recall_deliveries SET status = ?, attempts = attempts + 1,"
                " updated_at = ?, lease_until = ? WHERE id = ?",
                (DeliveryStatus.PENDING, now, now + lease_seconds, delivery_id),
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
            ok = frozenset(n for n, r in kept.receivers.items() if r == "ok")
            return kept, self._claim(conn, kept, ok, now, lease_seconds)

    def finish(self, delivery_id: str, claim: Claim, outcome: Outcome) -> None:
        """Record ``outcome`` and release the claims in one transaction (with any outcomes
        :meth:`finish_soon` held back).

        Usually two statements: each owned message is released only if this delivery still
        owns it with the receivers it had when claimed, and the delivery is updated only if no
        attempt recorded receivers before; otherwise (a lost lease, a replay) the kept states
        are read and merged, which is idempotent over what the first statements did.
        """
        now = time.time()
        receivers = _json_object(outcome.receivers) if outcome.receivers else "{}"
        conn, pending = self._begin_with_held()
        try:
            self._record(conn, delivery_id, claim, outcome, receivers, now)
            conn.execute("COMMIT")
        except BaseException as err:
            self._give_back(pending)
            self._roll_back(conn, err)
        self._committed()

    def finish_soon(
        self,
        delivery_id: str,
        claim: Claim,
        outcome: Outcome,
        on_failure: Callable[[StoreError], None] | None = None,
    ) -> None:
        """:meth:`finish`, recorded with the next delivery this process keeps (in the same
        transaction), or by a thread of the process soon after (see
        :mod:`~flask_oa_recall.store.grouped`); at once without ``group_outcomes``.

        Used for live callbacks, after their answer is decided. If the outcome cannot be
        recorded, ``on_failure`` is called once (from that thread) and it is tried again.
        """
        if self._outcomes is None:
            self.finish(delivery_id, claim, outcome)
            return
        receivers = _json_object(outcome.receivers) if outcome.receivers else "{}"
        held = _Finish(delivery_id, claim, outcome, receivers, time.time(), on_failure)
        self._outcomes.add(held)

    def _record(
        self,
        conn: sqlite3.Connection,
        delivery_id: str,
        claim: Claim,
        outcome: Outcome,
        receivers: str,
        now: float,
    ) -> None:
        """:meth:`finish`'s statements, inside its transaction."""
        keys = tuple(claim.owned)
        if (
            keys
            and claim.scope is not None
            and self._release_owned(conn, delivery_id, claim, outcome, now) == len(keys)
        ):
            keys = ()
        updated = conn.execute(
            _FINISH_FIRST_ATTEMPT, (outcome.status, receivers, outcome.error, now, delivery_id)
        ).rowcount
        if updated and not keys:
            return
        row = conn.execute(
            "SELECT sdk_app_id, official_account, receivers FROM oa_recall_deliveries WHERE id = ?",
            (delivery_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"delivery {delivery_id} vanished from the store")
        app_id, oa, kept_receivers = row
        if keys:
            self._release(conn, delivery_id, app_id, oa or "", keys, outcome, now)
        if not updated:
            merged = merge_receivers(json.loads(kept_receivers), dict(outcome.receivers))
            conn.execute(
                "UPDATE oa_recall_deliveries SET status = ?, receivers = ?, last_error = ?,"
                " updated_at = ?, lease_until = 0 WHERE id = ?",
                (outcome.status, json.dumps(merged), outcome.error, now, delivery_id),
            )

    def _release_owned(
        self,
        conn: sqlite3.Connection,
        delivery_id: str,
        claim: Claim,
        outcome: Outcome,
        now: float,
    ) -> int:
        """Release the messages ``delivery_id`` still owns with the receivers it claimed them
        with (compare-and-set); how many were. Messages that end alike (finished or not, the
        same receivers before and after) go in one statement."""
        assert claim.scope is not None
        app_id, oa = claim.scope
        succeeded, failed = outcome.succeeded, outcome.failed
        if len(claim.owned) == 1:  # the usual recall: one statement, nothing to group
            ((key, before),) = claim.owned.items()
            after = before | succeeded.get(key, _NO_NAMES)
            one = (0 if key in failed else 1, _names_json(after), now, app_id, oa, key)
            return conn.execute(_RELEASE_OWNED, (*one, delivery_id, _names_json(before))).rowcount
        # Grouped by the set objects themselves: outcomes share one set among keys handled by
        # the same receivers, and a set hashes once.
        groups: dict[tuple[bool, frozenset[str], frozenset[str]], list[str]] = {}
        for key, before in claim.owned.items():
            group = (key in failed, before, succeeded.get(key, _NO_NAMES))
            groups.setdefault(group, []).append(key)
        released = 0
        for (failed_here, before, handled), keys in groups.items():
            done = 0 if failed_here else 1
            after_json, before_json = _names_json(before | handled), _names_json(before)
            array = _keys_array(keys) if len(keys) > 1 and self._json_each else None
            if array is not None:
                row = (done, after_json, now, app_id, oa, array, delivery_id, before_json)
                released += conn.execute(_RELEASE_OWNED_EACH, row).rowcount
                continue
            rows = [
                (done, after_json, now, app_id, oa, key, delivery_id, before_json) for key in keys
            ]
            if len(rows) == 1:
                released += conn.execute(_RELEASE_OWNED, rows[0]).rowcount
            else:
                released += conn.executemany(_RELEASE_OWNED, rows).rowcount
        return released

    @staticmethod
    def _release(
        conn: sqlite3.Connection,
        delivery_id: str,
        app_id: int,
        oa: str,
        keys: Sequence[str],
        outcome: Outcome,
        now: float,
    ) -> None:
        """Apply ``outcome`` to the kept states of ``keys`` (logic.release, read and rewrite)."""
        states = _message_states(conn, app_id, oa, keys)
        released = []
        for key in keys:
            state = states.get(key) or MessageState()
            release(
                state, delivery_id, outcome.succeeded.get(key, frozenset()), key in outcome.failed
            )
            released.append(
                (
                    app_id,
                    oa,
                    key,
                    int(state.done),
                    state.owner,
                    state.lease_until,
                    _names_json(state.receivers_done),
                    now,
                )
            )
        conn.executemany(
            "INSERT OR REPLACE INTO oa_recall_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)", released
        )

    def get(self, delivery_id: str) -> Delivery | None:
        """One delivery, or ``None``."""
        self._flush()
        row = self._read(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM oa_recall_deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        )
        return _row_to_delivery(row) if row else None

    def deliveries(
        self, *, statuses: Collection[str] | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Kept deliveries, newest first."""
        self._flush()
        sql = f"SELECT {_COLUMNS} FROM oa_recall_deliveries"
        params: list[Any] = []
        if statuses:
            sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        sql += " ORDER BY received_at DESC LIMIT ?"
        params.append(limit)
        rows = self._read(lambda c: c.execute(sql, params).fetchall())
        return [_row_to_delivery(r) for r in rows]

    def prune(self, *, before: float, include_failed: bool = False) -> int:
        """Drop finished deliveries received before ``before``, and finished message states."""
        self._flush()
        statuses = [DeliveryStatus.DONE, DeliveryStatus.DUPLICATE]
        if include_failed:
            statuses.append(DeliveryStatus.FAILED)
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM oa_recall_deliveries WHERE received_at < ?"
                f" AND status IN ({', '.join('?' * len(statuses))})",
                (before, *statuses),
            )
            conn.execute(
                "DELETE FROM oa_recall_messages WHERE done = 1 AND updated_at < ?", (before,)
            )
            return cursor.rowcount

    def stored_layout_version(self) -> int | None:
        """The layout version recorded in the file (1 when there is a schema but no record).

        Read on a connection of its own, so that it answers for a file of any version.
        """
        if not os.path.exists(self.path):
            return None
        try:
            conn = sqlite3.connect(
                Path(self.path).resolve().as_uri() + "?mode=ro",
                uri=True,
                timeout=self._busy_timeout,
            )
            try:
                return _stored_layout(conn)
            finally:
                conn.close()
        except (sqlite3.Error, ValueError) as err:
            raise StoreError(f"cannot read the layout of SQLite store {self.path}: {err}") from err

    def ping(self) -> None:
        """Check that the file can be read and written (and record held-back outcomes)."""
        self._flush()
        with self._write() as conn:
            conn.execute("SELECT count(*) FROM oa_recall_deliveries").fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO oa_recall_meta VALUES ('pinged_at', ?)", (time.time(),)
            )

    def close(self) -> None:
        """Record held-back outcomes, then close this thread's connection."""
        try:
            self._flush()
        except StoreError as err:
            logger.error("outcomes not recorded before closing; they stay pending: %s", err)
        self._drop_connection()

    def _drop_connection(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
