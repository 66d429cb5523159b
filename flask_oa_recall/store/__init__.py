"""Where deliveries are kept, chosen by ``OA_RECALL_STORE``.

- unset: SQLite, ``oa_recall.sqlite3`` in the app's instance folder;
- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``;
- ``redis://host:port/db`` (``rediss://`` too; needs the ``redis`` extra);
- ``postgresql://user@host:5432/dbname`` (``postgres://`` too; needs the ``postgres`` extra);
- ``memory://``: this process only, for tests.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ..errors import ConfigError, MissingDependency
from .base import Claim, Delivery, DeliveryBusy, DeliveryStatus, NewDelivery, Outcome, Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "Claim",
    "Delivery",
    "DeliveryBusy",
    "DeliveryStatus",
    "MemoryStore",
    "NewDelivery",
    "Outcome",
    "SQLiteStore",
    "Store",
    "open_store",
]

DEFAULT_SQLITE_NAME = "oa_recall.sqlite3"


def open_store(url: str | None, instance_path: str) -> Store:
    """Open the store that ``OA_RECALL_STORE`` names.

    :raises ~flask_oa_recall.ConfigError: if the URL names no store this package has.
    :raises ~flask_oa_recall.MissingDependency: for a Redis or PostgreSQL URL without
        the ``redis`` or ``postgres`` extra installed.
    """
    if url is None:
        return SQLiteStore(os.path.join(instance_path, DEFAULT_SQLITE_NAME))
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStore(url)
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.lower().startswith(prefix) or len(url) == len(prefix):
            raise ConfigError(
                "OA_RECALL_STORE",
                f"OA_RECALL_STORE {url!r} is not a SQLite URL: use sqlite:///relative/path.db"
                " or sqlite:////absolute/path.db.",
            )
        path = url[len(prefix) :]
        return SQLiteStore(path if os.path.isabs(path) else os.path.join(instance_path, path))
    if scheme in ("redis", "rediss", "unix"):
        try:
            from .redis import RedisStore
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise MissingDependency(
                "redis", "OA_RECALL_STORE is a Redis URL but the redis client is not installed"
            ) from err
        return RedisStore(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise MissingDependency(
                "postgres",
                "OA_RECALL_STORE is a PostgreSQL URL but psycopg or psycopg_pool is not installed",
            ) from err
        return PostgresStore(url)
    raise ConfigError(
        "OA_RECALL_STORE",
        f"OA_RECALL_STORE has an unknown scheme {scheme!r}: use sqlite:///…, redis://…,"
        " postgresql://…, memory://, or leave it unset for SQLite in the instance folder.",
    )
