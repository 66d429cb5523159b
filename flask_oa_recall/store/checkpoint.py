"""WAL checkpoints for the SQLite store, in a thread of their own instead of in a callback.

SQLite copies the WAL back into the database file (a checkpoint, with an ``fsync``) in the
commit that takes the WAL past ``wal_autocheckpoint`` pages: one callback in a few hundred then
waits several milliseconds, and under load every request queued behind it waits too. The store
sets its connections' ``wal_autocheckpoint`` to :data:`BACKSTOP_PAGES`, and a
:class:`Checkpointer` runs a ``PASSIVE`` checkpoint from a thread of the process every
:data:`EVERY_COMMITS` commits: it neither waits for nor blocks the workers' transactions, and
the interpreter lock is released while SQLite runs it. If the thread falls behind, the
backstop checkpoints in a commit, as before.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["BACKSTOP_PAGES", "EVERY_COMMITS", "IDLE_SECONDS", "Checkpointer"]

logger = logging.getLogger(__name__)

#: A checkpoint is asked for after this many commits in a process (a callback's commit
#: writes about four pages to the WAL, so about 400 pages: below SQLite's default of 1000).
EVERY_COMMITS = 100
#: ``wal_autocheckpoint`` of the store's connections: a commit checkpoints only past this.
BACKSTOP_PAGES = 10_000
#: The thread ends after this long without a checkpoint to run.
IDLE_SECONDS = 5.0

_everywhere: weakref.WeakSet[Checkpointer] = weakref.WeakSet()


def _forked() -> None:
    # The parent's thread is not in the child: the next request starts one of its own.
    for checkpointer in list(_everywhere):
        checkpointer._reset()


os.register_at_fork(after_in_child=_forked)


class Checkpointer:
    """Runs ``checkpoint`` in a thread after every :data:`EVERY_COMMITS` calls of
    :meth:`committed`.

    :param checkpoint: runs one checkpoint; any exception is logged and the next one tried.
    """

    def __init__(self, checkpoint: Callable[[], None]) -> None:
        self._checkpoint = checkpoint
        self._reset()
        _everywhere.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._commits = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        """Count one commit; every :data:`EVERY_COMMITS`, wake the thread."""
        self._commits += 1  # not under the lock: a lost count only delays a checkpoint
        if self._commits < EVERY_COMMITS:
            return
        self._commits = 0
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_run, args=(weakref.ref(self),), name="oa-recall-checkpoint", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _idle(self) -> bool:
        """Whether the thread may end (nothing asked for meanwhile)."""
        with self._lock:
            if self._wake.is_set():
                return False
            self._thread = None
            return True

    def _run_once(self) -> None:
        try:
            self._checkpoint()
        except Exception as err:
            logger.debug("background WAL checkpoint failed: %s", err)


def _run(ref: weakref.ReferenceType[Checkpointer]) -> None:
    while True:
        checkpointer: Any = ref()
        if checkpointer is None:
            return
        wake = checkpointer._wake
        del checkpointer  # never keep the store alive while waiting
        woken = wake.wait(IDLE_SECONDS)
        checkpointer = ref()
        if checkpointer is None:
            return
        if not woken:
            if checkpointer._idle():
                return
            continue
        wake.clear()
        checkpointer._run_once()
        del checkpointer
