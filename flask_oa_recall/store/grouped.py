"""Outcomes the SQLite store records together with its next write.

A callback costs the default store two transactions: keeping the delivery before dispatch, and
recording its outcome after. Most of a transaction's cost is its commit (the pages it writes to
the WAL, the file locks), so the outcome is not committed on its own: :class:`PendingOutcomes`
holds it until the next callback's keep, which records it in the same transaction, or until a
background thread of the process records it after :data:`GROUP_SECONDS` without one.

Readers in the same process (``get``, ``deliveries``, replay) record what is pending first, so
they always see it. Another process sees an outcome within about :data:`GROUP_SECONDS` of the
answer. A process killed meanwhile leaves the delivery pending, exactly as a kill between
dispatch and the outcome always did: replay runs it again (``docs/failure-modes.rst``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ..errors import StoreError

__all__ = ["GROUP_SECONDS", "MAX_PENDING", "PendingOutcomes", "Reportable", "report_once"]

logger = logging.getLogger(__name__)

#: How long an outcome waits for the next callback's transaction before a thread records it.
GROUP_SECONDS = 0.02
#: Outcomes held at most while the store cannot record them; older ones are let go (their
#: deliveries stay pending in the store, for replay) and logged.
MAX_PENDING = 1000
#: After a failed attempt to record them, the thread tries again this much later.
RETRY_SECONDS = 1.0
#: The thread ends after this long without work (a new one starts with the next outcome).
IDLE_SECONDS = 5.0

T = TypeVar("T")

_everywhere: weakref.WeakSet[PendingOutcomes[Any]] = weakref.WeakSet()


class Reportable(Protocol):
    """A held outcome as the stores keep it: whom to tell of a failure, and whether told."""

    on_failure: Callable[[StoreError], None] | None
    reported: bool


def report_once(held: Sequence[Reportable], err: StoreError) -> None:
    """Tell each caller once that its outcome could not be recorded;
    it is tried again."""
    for item in held:
        if item.on_failure is not None and not item.reported:
            item.reported = True
            try:
                item.on_failure(err)
            except Exception:
                logger.exception("reporting an unrecorded outcome failed")


def _forked() -> None:
    # In the child, where only the forking thread runs: what was held belongs to the parent,
    # which records it, and the parent's thread is not here.
    for pending in list(_everywhere):
        pending._reset()


os.register_at_fork(after_in_child=_forked)


@atexit.register
def _record_all_at_exit() -> None:
    for pending in list(_everywhere):
        try:
            pending.flush()
        except StoreError as err:
            logger.error("outcomes not recorded at exit; their deliveries stay pending: %s", err)


class PendingOutcomes(Generic[T]):
    """Outcomes waiting to be written, for one store in one process.

    :param write: records a list of outcomes in one transaction of its own; raises
        :class:`~flask_oa_recall.StoreError` if it cannot.
    :param failed: told, from the thread, which outcomes it could not write and why (they
        are kept to be tried again).
    """

    def __init__(
        self,
        write: Callable[[list[T]], None],
        failed: Callable[[list[T], StoreError], None],
    ) -> None:
        self._write = write
        self._failed = failed
        self._reset()
        _everywhere.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        #: Held while outcomes taken from the list are being written (by the thread, or by
        #: :meth:`flush`), so that a flush at exit waits for the thread's write to end. An
        #: RLock: a failure report may call back into a reader, which flushes.
        self._writing = threading.RLock()
        self._items: list[T] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, item: T) -> None:
        """Hold ``item`` until the next :meth:`take` or the thread's write."""
        with self._lock:
            self._items.append(item)
            self._trim()
        self._nudge()

    def _nudge(self) -> None:
        """Have the thread write what is held, after :data:`GROUP_SECONDS`."""
        if self._thread is None:
            self._start()
        if not self._wake.is_set():
            self._wake.set()

    def take(self) -> list[T]:
        """Everything pending, now the caller's to write (see :meth:`give_back`)."""
        if not self._items:
            return []
        with self._lock:
            items, self._items = self._items, []
        return items

    def give_back(self, items: list[T]) -> None:
        """Return ``items`` that could not be written, ahead of newer ones; the thread tries
        them again (and reports them), even if no other outcome comes."""
        if not items:
            return
        with self._lock:
            self._items[:0] = items
            self._trim()
        self._nudge()

    def flush(self) -> None:
        """Write what is pending now, in a transaction of its own (readers call this first),
        after any write the thread has under way."""
        with self._writing:
            self._write_or_give_back(self.take())

    def _write_or_give_back(self, items: list[T]) -> None:
        if not items:
            return
        try:
            self._write(items)
        except BaseException:
            self.give_back(items)
            raise

    def _trim(self) -> None:
        """Let the oldest go beyond :data:`MAX_PENDING` (under the lock)."""
        while len(self._items) > MAX_PENDING:
            self._let_go(self._items.pop(0))

    def _let_go(self, item: T) -> None:
        logger.error(
            "more than %d outcomes could not be recorded; one is let go and its delivery stays"
            " pending for replay: %r",
            MAX_PENDING,
            item,
        )

    def _start(self) -> None:
        thread = threading.Thread(
            target=_run, args=(weakref.ref(self),), name="oa-recall-outcomes", daemon=True
        )
        self._thread = thread
        thread.start()

    def _idle(self) -> bool:
        """Whether the thread may end: nothing pending, nothing on its way."""
        with self._lock:
            if self._items or self._wake.is_set():
                return False
            self._thread = None
            return True

    def _write_in_thread(self) -> None:
        with self._writing:
            items = self.take()
            try:
                self._write_or_give_back(items)
            except StoreError as err:
                logger.error("could not record %d outcomes; will try again: %s", len(items), err)
                self._failed(items, err)
            except Exception:
                logger.exception("could not record %d outcomes; will try again", len(items))
            else:
                return
        time.sleep(RETRY_SECONDS)
        self._wake.set()


def _run(ref: weakref.ReferenceType[PendingOutcomes[Any]]) -> None:
    """The thread: after a wake-up, wait :data:`GROUP_SECONDS`, then write what is left. It ends
    after :data:`IDLE_SECONDS` without work, or when its store is gone."""
    while True:
        pending = ref()
        if pending is None:
            return
        wake = pending._wake
        del pending  # never keep the store alive while waiting
        woken = wake.wait(IDLE_SECONDS)
        pending = ref()
        if pending is None:
            return
        if not woken:
            if pending._idle():
                return
            # Something is held and nothing woke the thread: write it now.
        else:
            wake.clear()
            del pending
            time.sleep(GROUP_SECONDS)
            pending = ref()
            if pending is None:
                return
        pending._write_in_thread()
        del pending
