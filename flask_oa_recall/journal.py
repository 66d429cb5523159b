"""A local journal of unfinished deliveries, for stores that may forget (``OA_RECALL_JOURNAL``).

Each host keeps, in a SQLite file of its own (``oa_recall_journal.sqlite3`` in the instance
folder by default), a copy of every delivery it keeps in the shared store until the store says
it is finished: written before the store is asked to keep it, updated when its receivers
failed, deleted once it is done or a duplicate. If the store then forgets (a Redis restart
without persistence), ``flask oa-recall replay`` finds the deliveries the store no longer has
and keeps them there again as failed, so that they are replayed like any other. It also keeps
the store's marker (:mod:`flask_oa_recall.durability`), so that a process started after the
store forgot still notices.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .durability import Marker
from .errors import StoreError
from .store.base import NewDelivery

__all__ = ["DEFAULT_JOURNAL_NAME", "Journal", "JournalEntry"]

#: The journal's file name in the instance folder when ``OA_RECALL_JOURNAL = True``.
DEFAULT_JOURNAL_NAME = "oa_recall_journal.sqlite3"

_BUSY_SECONDS = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    state TEXT NOT NULL,
    journalled_at REAL NOT NULL,
    received_at REAL NOT NULL,
    sdk_app_id INTEGER NOT NULL,
    command TEXT NOT NULL,
    query TEXT NOT NULL,
    body TEXT NOT NULL,
    official_account TEXT,
    msg_keys TEXT NOT NULL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS markers (
    store TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    created_at REAL NOT NULL,
    run_id TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class JournalEntry:
    """A journalled delivery: ``state`` is ``pending`` (kept, not finished) or ``failed``."""

    delivery: NewDelivery
    state: str
    journalled_at: float
    last_error: str | None


class Journal:
    """The journal file of one host, shared by its worker processes (SQLite, WAL).

    :param path: the SQLite file; its folder is created if missing.
    :param store_url: the (redacted) URL of the store it backs; one file may back several.
    """

    def __init__(self, path: str, store_url: str) -> None:
        self.path = path
        self.store_url = store_url
        self._local = threading.local()
        self._pid = os.getpid()
        try:
            with self._connection() as conn:
                conn.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise StoreError(f"the journal {path} cannot be opened: {err}") from err

    def _connect(self) -> sqlite3.Connection:
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=_BUSY_SECONDS, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # One connection per thread, opened again after a fork (gunicorn preloads).
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._pid != os.getpid():
            self._pid = os.getpid()
            conn = self._connect()
            self._local.conn = conn
        yield conn

    def _run(self, what: str, sql: str, args: tuple[object, ...]) -> None:
        try:
            with self._connection() as conn:
                conn.execute(sql, args)
        except sqlite3.Error as err:
            raise StoreError(f"the journal {self.path} could not {what}: {err}") from err

    def add(self, delivery: NewDelivery) -> None:
        """Journal ``delivery`` as pending, before the store keeps it."""
        self._run(
            f"keep delivery {delivery.id}",
            "INSERT OR REPLACE INTO journal (id, store, state, journalled_at, received_at,"
            " sdk_app_id, command, query, body, official_account, msg_keys)"
            " VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                delivery.id,
                self.store_url,
                time.time(),
                delivery.received_at,
                delivery.sdk_app_id,
                delivery.command,
                json.dumps(dict(delivery.query)),
                delivery.body,
                delivery.official_account,
                json.dumps(list(delivery.msg_keys)),
            ),
        )

    def fail(self, delivery_id: str, error: str | None) -> None:
        """Mark a journalled delivery failed (its receivers raised; replay runs them)."""
        self._run(
            f"mark delivery {delivery_id} failed",
            "UPDATE journal SET state = 'failed', last_error = ? WHERE id = ?",
            (error, delivery_id),
        )

    def drop(self, delivery_id: str) -> None:
        """Forget a delivery the store finished (or never kept)."""
        self._run(
            f"drop delivery {delivery_id}", "DELETE FROM journal WHERE id = ?", (delivery_id,)
        )

    def entries(self) -> list[JournalEntry]:
        """Every journalled delivery of this store, oldest first."""
        try:
            with self._connection() as conn:
                rows = conn.execute(
                    "SELECT id, state, journalled_at, received_at, sdk_app_id, command, query,"
                    " body, official_account, msg_keys, last_error FROM journal WHERE store = ?"
                    " ORDER BY received_at, id",
                    (self.store_url,),
                ).fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"the journal {self.path} could not be read: {err}") from err
        return [
            JournalEntry(
                delivery=NewDelivery(
                    id=row[0],
                    received_at=row[3],
                    sdk_app_id=row[4],
                    command=row[5],
                    query=json.loads(row[6]),
                    body=row[7],
                    official_account=row[8],
                    msg_keys=tuple(json.loads(row[9])),
                ),
                state=row[1],
                journalled_at=row[2],
                last_error=row[10],
            )
            for row in rows
        ]

    def marker(self) -> Marker | None:
        """The store marker this host saw last, if any."""
        try:
            with self._connection() as conn:
                row = conn.execute(
                    "SELECT id, created_at, run_id FROM markers WHERE store = ?",
                    (self.store_url,),
                ).fetchone()
        except sqlite3.Error as err:
            raise StoreError(f"the journal {self.path} could not be read: {err}") from err
        return None if row is None else Marker(row[0], row[1], row[2], row[2])

    def remember(self, marker: Marker) -> None:
        """Keep ``marker`` as the one this host saw last."""
        self._run(
            "keep the store's marker",
            "INSERT OR REPLACE INTO markers (store, id, created_at, run_id) VALUES (?, ?, ?, ?)",
            (self.store_url, marker.id, marker.created_at, marker.run_id),
        )

    def close(self) -> None:
        """Close this thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
