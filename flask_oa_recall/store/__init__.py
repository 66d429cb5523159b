"""Where deliveries are kept, chosen by ``OA_RECALL_STORE``.

- unset: SQLite, ``oa_recall.sqlite3`` in the app's instance folder;
- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``;
- ``redis://host:port/db`` (``rediss://`` too; needs the ``redis`` extra);
- ``memory://``: this process only, for tests.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

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
    """Open the store that ``OA_RECALL_STORE`` names; raise :class:`ValueError` if it is unknown."""
    if url is None:
        return SQLiteStore(os.path.join(instance_path, DEFAULT_SQLITE_NAME))
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStore(url)
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.lower().startswith(prefix) or len(url) == len(prefix):
            raise ValueError(
                f"OA_RECALL_STORE {url!r} is not a SQLite URL: use sqlite:///relative/path.db"
                " or sqlite:////absolute/path.db."
            )
        path = url[len(prefix) :]
        return SQLiteStore(path if os.path.isabs(path) else os.path.join(instance_path, path))
    if scheme in ("redis", "rediss", "unix"):
        try:
            from .redis import RedisStore
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "OA_RECALL_STORE is a Redis URL but the redis client is not installed:"
                " pip install 'flask-oa-recall[redis]'."
            ) from err
        return RedisStore(url)
    raise ValueError(
        f"OA_RECALL_STORE has an unknown scheme {scheme!r}: use sqlite:///…, redis://…,"
        " memory://, or leave it unset for SQLite in the instance folder."
    )
