"""Answering before-callbacks: which commands are "before", and running a decider in time.

A decider runs in a thread of a small per-process pool while the request's thread waits for it
with what is left of ``OA_RECALL_DECISION_SECONDS``. So the answer goes out inside the budget
whatever the server's worker model (a gunicorn sync worker included): a decider still running
at the budget gets the fallback answer, and whatever it returns later is logged and discarded.
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask

from .config import Settings
from .decisions import Decision
from .dispatch import receiver_name
from .errors import DecidersBusy, DecisionTimeout
from .events import Callback
from .signals import decision_failed

__all__ = [
    "PREV_COMMANDS",
    "Decider",
    "DeciderPool",
    "Verdict",
    "check_before_command",
    "decide",
    "is_before_command",
    "send_decision_failed",
]

logger = logging.getLogger(__name__)

#: A decider: gets the verified :class:`~flask_oa_recall.Callback`, returns a
#: :class:`~flask_oa_recall.Decision` or ``None`` (allow); ``async def`` works too.
Decider = Callable[[Callback], Decision | Awaitable[Decision | None] | None]

#: Before-commands whose name does not say ``CallbackBefore``: the friend requests.
PREV_COMMANDS = frozenset({"Sns.CallbackPrevFriendAdd", "Sns.CallbackPrevFriendResponse"})

_ALLOW = Decision()


def is_before_command(command: str) -> bool:
    """Whether Tencent follows the answer to ``command``: its name after the namespace starts
    with ``CallbackBefore`` (``OfficialAccount.CallbackBeforeSendMsg``,
    ``C2C.CallbackBeforeSendMsg``, ``Group.CallbackBeforeCreateGroup``...), or it is one of
    :data:`PREV_COMMANDS`."""
    return command.rpartition(".")[2].startswith("CallbackBefore") or command in PREV_COMMANDS


def check_before_command(command: Any) -> str:
    """``command`` if a decider may be registered for it.

    :raises ValueError: if it is not a before-command.
    :raises TypeError: if it is not a string.
    """
    if not isinstance(command, str):
        raise TypeError(f"a decider's command must be a str, got {type(command).__name__}.")
    if "." not in command or not is_before_command(command):
        raise ValueError(
            f"{command!r} is not a before-command: deciders answer commands such as"
            " 'OfficialAccount.CallbackBeforeSendMsg' (Namespace.CallbackBefore...) or"
            f" {', '.join(sorted(PREV_COMMANDS))}; receive other commands with signals."
        )
    return command


class DeciderPool:
    """At most ``size`` daemon threads, started as needed, that run deciders.

    A decider that never returns keeps its thread; when all are taken :meth:`submit` refuses at
    once instead of queueing, so threads and queued work never pile up. Daemon threads, so a
    stuck decider does not keep the process from exiting. Bound to the process that made it
    (see :attr:`pid`): after a fork, make a new one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        #: The process the threads live in.
        self.pid = os.getpid()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._busy = 0

    @property
    def busy(self) -> int:
        """Jobs submitted and not finished yet."""
        return self._busy

    def submit(self, job: Callable[[], None]) -> bool:
        """Run ``job`` in a thread of the pool; ``False`` (and nothing run) if none is free."""
        with self._lock:
            if self._busy >= self.size:
                return False
            self._busy += 1
            # There is always a thread per unfinished job, so a queued job never waits.
            if self._threads < self._busy:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"oa-recall-decider-{self._threads}", daemon=True
                ).start()
        self._jobs.put(job)
        return True

    def shutdown(self) -> None:
        """Let each thread end once it is idle."""
        for _ in range(self._threads):
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException:  # a job catches Exception; this is SystemExit and the like
                logger.exception("a decider thread's job raised")
            finally:
                with self._lock:
                    self._busy -= 1
        with self._lock:
            self._threads -= 1


@dataclass(frozen=True)
class Verdict:
    """What a before-callback is answered, and why.

    :param decision: the decision answered.
    :param failure: why the fallback was answered instead of the decider's decision, or
        ``None``.
    """

    decision: Decision
    failure: Exception | None = None


class _Job:
    """One decider run; whoever comes second (the result, or the waiter giving up) loses."""

    def __init__(self, name: str, command: str, delivery_id: str) -> None:
        self.name = name
        self.command = command
        self.delivery_id = delivery_id
        self.done = threading.Event()
        self.decision: Decision | None = None
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._abandoned = False

    def finish(self, decision: Decision | None, error: Exception | None) -> None:
        with self._lock:
            if not self._abandoned:
                self.decision, self.error = decision, error
                self.done.set()
                return
        if error is not None:
            logger.warning(
                "decider %s for %s raised after the budget for delivery %s; discarded (the"
                " fallback was answered)",
                self.name,
                self.command,
                self.delivery_id,
                exc_info=error,
            )
        else:
            assert decision is not None
            logger.warning(
                "decider %s for %s returned %s (ErrorCode %d) after the budget for delivery"
                " %s; discarded (the fallback was answered)",
                self.name,
                self.command,
                decision.kind,
                decision.error_code,
                self.delivery_id,
            )

    def abandon(self) -> bool:
        """Give up waiting; ``False`` if the result came in just before."""
        with self._lock:
            if self.done.is_set():
                return False
            self._abandoned = True
            return True


def _fallback(settings: Settings, command: str, failure: Exception) -> Decision:
    if settings.decision_fallback == "allow":
        return _ALLOW
    if isinstance(failure, DecisionTimeout):
        why = f"did not answer within {failure.seconds:g} s"
    elif isinstance(failure, DecidersBusy):
        why = "could not run: every decider thread is busy"
    else:
        why = f"failed ({type(failure).__name__})"
    return Decision.deny(f"Denied by OA_RECALL_DECISION_FALLBACK: the decider for {command} {why}.")


def decide(
    app: Flask,
    decider: Decider,
    callback: Callback,
    environ: Mapping[str, Any],
    raw: bytes,
    settings: Settings,
    pool: DeciderPool,
    deadline: float,
) -> Verdict:
    """Run ``decider`` in ``pool`` and wait for it until ``deadline`` (``time.monotonic()``).

    The decider runs inside a request context of its own, built from a copy of ``environ`` with
    ``raw`` as the body, so it can use ``current_app``, ``g`` and ``request``. If it raises,
    returns something else than a :class:`Decision` or ``None``, is not done by ``deadline``,
    or no thread is free, the verdict is the fallback with the reason as ``failure``; the
    reason is logged here (the caller sends :data:`~flask_oa_recall.decision_failed`).
    """
    name = receiver_name(decider)
    command = callback.command
    call: Callable[[Callback], Any] = (
        app.ensure_sync(decider) if inspect.iscoroutinefunction(decider) else decider
    )
    own_environ = dict(environ)
    own_environ["wsgi.input"] = io.BytesIO(raw)
    own_environ["CONTENT_LENGTH"] = str(len(raw))
    job = _Job(name, command, callback.delivery_id)

    def run() -> None:
        try:
            with app.request_context(own_environ):
                result = call(callback)
            if result is not None and not isinstance(result, Decision):
                raise TypeError(
                    f"a decider returns a Decision or None, got {type(result).__name__}"
                )
        except Exception as exc:
            job.finish(None, exc)
        else:
            job.finish(result or _ALLOW, None)

    failure: Exception | None
    if not pool.submit(run):
        failure = DecidersBusy(command, pool.size, callback.delivery_id)
        logger.error(
            "no free decider thread for %s (all %d busy) for delivery %s; answered the"
            " fallback (%s) at once",
            command,
            pool.size,
            callback.delivery_id,
            settings.decision_fallback,
        )
    elif job.done.wait(max(deadline - time.monotonic(), 0.0)) or not job.abandon():
        if job.error is None:
            assert job.decision is not None
            return Verdict(job.decision)
        failure = job.error
        logger.error(
            "decider %s for %s failed for delivery %s; answered the fallback (%s)",
            name,
            command,
            callback.delivery_id,
            settings.decision_fallback,
            exc_info=failure,
        )
    else:
        failure = DecisionTimeout(command, settings.decision_seconds, callback.delivery_id)
        logger.error(
            "decider %s for %s did not return within %g s for delivery %s; answered the"
            " fallback (%s)",
            name,
            command,
            settings.decision_seconds,
            callback.delivery_id,
            settings.decision_fallback,
        )
    return Verdict(_fallback(settings, command, failure), failure)


def send_decision_failed(app: Flask, command: str, failure: Exception, delivery_id: str) -> None:
    """Send :data:`~flask_oa_recall.decision_failed`; a receiver that raises is logged."""
    try:
        decision_failed.send(
            app,
            _async_wrapper=app.ensure_sync,
            command=command,
            exception=failure,
            delivery_id=delivery_id,
        )
    except Exception:
        logger.exception("a receiver of decision_failed raised; ignored")
