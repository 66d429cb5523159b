"""Does the store keep what it holds across a restart, and has it forgotten?

A Redis that keeps nothing on disk (no AOF, no RDB) loses every delivery kept for replay when
it restarts: failed deliveries vanish before anyone replays them. This module

- reads what a store keeps (:class:`Persistence`, for Redis from ``CONFIG GET``) so that
  start-up and ``flask oa-recall check`` can say so;
- notices that a store forgot (:class:`ForgetWatch`): every store that supports it holds a
  *marker* written at its first use (an id, the time, the server's run id); a marker that is
  gone, or replaced by another one, means the store lost what it held. It is reported as an
  ERROR and with the :data:`~flask_oa_recall.store_forgot` signal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

from .errors import StoreError

__all__ = [
    "FORGET_CHECK_SECONDS",
    "ForgetReport",
    "ForgetWatch",
    "Marked",
    "Marker",
    "Persistence",
    "redis_persistence",
    "warn_if_forgetful",
]

logger = logging.getLogger(__name__)

#: How often (at most) each process looks at the store's marker while serving callbacks.
FORGET_CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class Persistence:
    """What a store keeps across a restart.

    :param keeps: ``True`` (it keeps everything), ``False`` (a restart or a crash loses kept
        deliveries) or ``None`` (the server does not say).
    :param text: what was found, for people.
    """

    keeps: bool | None
    text: str


def redis_persistence(config: Mapping[str, str]) -> Persistence:
    """Judge a Redis server's ``CONFIG GET`` answers for ``appendonly``, ``save`` and
    ``maxmemory``/``maxmemory-policy``."""
    aof = config.get("appendonly", "").lower() == "yes"
    save = config.get("save", "").strip()
    policy = config.get("maxmemory-policy", "noeviction")
    if config.get("maxmemory", "0") not in ("", "0") and policy.startswith("allkeys-"):
        return Persistence(
            False,
            f"maxmemory-policy {policy}: when memory runs short Redis evicts kept deliveries"
            " (use noeviction or a volatile-* policy)",
        )
    if aof:
        return Persistence(True, "append-only file on (appendonly yes)")
    if save:
        return Persistence(
            False,
            f"RDB snapshots only (save {save!r}): a crash loses the deliveries kept since the"
            " last snapshot",
        )
    return Persistence(
        False,
        "nothing is kept on disk (appendonly no, save ''): a restart loses every delivery"
        " kept for replay",
    )


@dataclass(frozen=True)
class Marker:
    """The store's marker, and the server's run id when it was read."""

    id: str
    created_at: float
    run_id: str
    server_run_id: str


@runtime_checkable
class Marked(Protocol):
    """A store that can tell what it keeps and hold a marker (the Redis store)."""

    url: str

    def persistence(self) -> Persistence:
        """What the store keeps across a restart."""

    def marker(self) -> Marker:
        """The marker written at the store's first use; written now if missing."""


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class ForgetReport:
    """A store forgot what it held: its marker ``lost`` is gone, ``found`` stands instead."""

    store_url: str
    lost: Marker
    found: Marker

    @property
    def restarted(self) -> bool:
        """Whether the server restarted in between (its run id changed), as far as known."""
        return bool(self.lost.run_id and self.found.server_run_id) and (
            self.lost.run_id != self.found.server_run_id
        )

    def describe(self) -> str:
        """One sentence for the log and ``check``."""
        why = (
            "the server restarted without keeping its data"
            if self.restarted
            else "its keys were deleted (FLUSHDB, eviction, or by hand)"
        )
        return (
            f"the store at {self.store_url} forgot what it held: its marker from"
            f" {_utc(self.lost.created_at)} is gone ({why}); failed and interrupted deliveries"
            " kept there are lost, and redeliveries of messages it had finished run again"
        )


class ForgetWatch:
    """Looks at a store's marker now and then, and reports once when it changed.

    :param store: the store to watch.
    :param on_forgot: called with the report, once per change seen by this process.
    :param remembered: the marker id this host last saw (from the local journal), so that a
        process started after the store forgot notices too.
    :param remember: called with each marker seen, to keep it for the next process.
    """

    def __init__(
        self,
        store: Marked,
        on_forgot: Callable[[ForgetReport], None],
        *,
        remembered: Marker | None = None,
        remember: Callable[[Marker], None] | None = None,
        interval: float | None = None,
    ) -> None:
        self.store = store
        self.known = remembered
        self.last_report: ForgetReport | None = None
        self._on_forgot = on_forgot
        self._remember = remember
        self._interval = FORGET_CHECK_SECONDS if interval is None else interval
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def poll(self) -> None:
        """:meth:`check` if the last check is older than the interval; never raises."""
        if time.monotonic() - self._checked_at >= self._interval:
            self.check()

    def check(self) -> ForgetReport | None:
        """Read the marker now; report and return a change, or ``None`` (also when the store
        cannot be reached: the request path reports that already)."""
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                marker = self.store.marker()
            except StoreError as err:
                logger.debug("store marker unreadable: %s", err)
                return None
            report = None
            if self.known is not None and self.known.id != marker.id:
                report = ForgetReport(self.store.url, self.known, marker)
                self.last_report = report
            if self.known is None or self.known.id != marker.id:
                self.known = marker
                if self._remember is not None:
                    try:
                        self._remember(marker)
                    except StoreError as err:
                        logger.error("the store's marker could not be remembered: %s", err)
        if report is not None:
            self._on_forgot(report)
        return report


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_if_forgetful(store: Marked, *, journal: bool) -> Persistence:
    """Log a WARNING, once per process and store, if ``store`` may lose what it keeps."""
    persistence = store.persistence()
    if persistence.keeps is False:
        with _warned_lock:
            first = store.url not in _warned
            _warned.add(store.url)
        if first:
            if journal:
                logger.warning(
                    "The delivery store %s may forget: %s. OA_RECALL_JOURNAL is on, so failed"
                    " and interrupted deliveries are also kept in this host's journal and"
                    " 'flask oa-recall replay' brings them back; which messages were already"
                    " handled is still forgotten, so a redelivery after a restart runs again.",
                    store.url,
                    persistence.text,
                )
            else:
                logger.warning(
                    "The delivery store %s may forget: %s. Failed deliveries kept for replay"
                    " would be LOST with it. Turn on Redis persistence (appendonly yes), or set"
                    " OA_RECALL_JOURNAL = True to keep them in a local journal as well.",
                    store.url,
                    persistence.text,
                )
    return persistence
