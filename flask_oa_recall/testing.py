"""Helpers for testing an app that uses flask_oa_recall: signed callbacks and captured events.

Build a callback as Tencent sends it, post it through Flask's test client, and look at what the
app emitted::

    from flask_oa_recall.testing import capture, post_callback

    def test_recall_hides_message(app):
        with capture(app) as seen:
            response = post_callback(app.test_client(), app, msg_keys=["71_1_1698741698"])
        assert response.json["ActionStatus"] == "OK"
        assert seen.msg_keys == ["71_1_1698741698"]

A decider's answer to a before-callback is read back with :func:`decision_of`::

    from flask_oa_recall import Decision
    from flask_oa_recall.testing import before_send_msg_body, decision_of, post_callback

    def test_moderation_denies_the_forbidden_word(app):
        response = post_callback(app.test_client(), app, before_send_msg_body("forbidden"))
        assert decision_of(response) == Decision.deny("Blocked by moderation.")

With pytest, the fixtures of :mod:`flask_oa_recall.pytest_plugin` (``oa_recall_post``,
``oa_recall_events``, ``oa_recall_decide``, ...) do the same in one line each.

The helpers read the SdkAppid and the first token from the app's config, so what they sign is
what the app accepts. Nothing here mocks the extension: requests go through the real route.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from .decisions import Decision
from .events import RECALL_COMMAND, Callback, OfficialAccountEvent, RecallEvent
from .kinds import KINDS
from .payloads import (
    ADD_SUBSCRIBER_COMMAND,
    BEFORE_ADD_SUBSCRIBER_COMMAND,
    BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND,
    BEFORE_SEND_MSG_COMMAND,
    C2C_BEFORE_SEND_MSG_COMMAND,
    DEFAULT_MSG_KEY,
    DEFAULT_OFFICIAL_ACCOUNT,
    GROUP_BEFORE_SEND_MSG_COMMAND,
    SEND_MSG_COMMAND,
    after_add_subscriber_body,
    after_create_body,
    after_delete_subscriber_body,
    after_destroyed_body,
    after_full_body,
    after_info_changed_body,
    after_send_msg_body,
    before_add_subscriber_body,
    before_callback_body,
    before_create_official_account_body,
    before_send_msg_body,
    c2c_before_send_msg_body,
    callback_body,
    callback_path,
    group_before_send_msg_body,
    recall_body,
    signed_query,
    typed_body,
)
from .security import sign
from .signals import (
    callback_received,
    callback_rejected,
    decision_failed,
    messages_recalled,
    receiver_failed,
    store_failed,
)

#: An Official Account event type, for :meth:`Captured.of`.
_E = TypeVar("_E", bound=OfficialAccountEvent)

__all__ = [
    "ADD_SUBSCRIBER_COMMAND",
    "BEFORE_ADD_SUBSCRIBER_COMMAND",
    "BEFORE_CREATE_OFFICIAL_ACCOUNT_COMMAND",
    "BEFORE_SEND_MSG_COMMAND",
    "C2C_BEFORE_SEND_MSG_COMMAND",
    "DEFAULT_MSG_KEY",
    "DEFAULT_OFFICIAL_ACCOUNT",
    "GROUP_BEFORE_SEND_MSG_COMMAND",
    "SEND_MSG_COMMAND",
    "Captured",
    "DecisionFailure",
    "ReceiverFailure",
    "Rejected",
    "after_add_subscriber_body",
    "after_create_body",
    "after_delete_subscriber_body",
    "after_destroyed_body",
    "after_full_body",
    "after_info_changed_body",
    "after_send_msg_body",
    "before_add_subscriber_body",
    "before_callback_body",
    "before_create_official_account_body",
    "before_send_msg_body",
    "c2c_before_send_msg_body",
    "callback_body",
    "callback_path",
    "capture",
    "capture_callbacks",
    "capture_events",
    "capture_recalls",
    "decision_of",
    "group_before_send_msg_body",
    "post_callback",
    "recall_body",
    "sign",
    "signed_query",
    "typed_body",
]


def post_callback(
    client: FlaskClient,
    app: Flask | None = None,
    body: Mapping[str, Any] | bytes | None = None,
    *,
    msg_keys: Sequence[str] = (DEFAULT_MSG_KEY,),
    official_account: str = DEFAULT_OFFICIAL_ACCOUNT,
    path: str | None = None,
    **query: Any,
) -> TestResponse:
    """POST a signed callback through ``client``, as Tencent would.

    The response is read and closed before it is returned, as a server does once the answer
    is written: what the extension does after the answer (``OA_RECALL_DISPATCH =
    "after_response"``, keeping a before-callback, ``decision_failed``) has run by then.

    :param client: the app's test client.
    :param app: whose config signs the request; ``client.application`` by default.
    :param body: a dict (sent as JSON) or raw bytes; by default a recall of ``msg_keys`` by
        ``official_account``.
    :param path: the URL path; the app's callback route by default.
    :param query: passed to :func:`signed_query` (``command``, ``token``, ``request_time``, ...).
        ``command`` defaults to the body's ``CallbackCommand``.
    """
    app = app if app is not None else client.application
    if body is None:
        body = recall_body(msg_keys, official_account=official_account)
    command = query.pop("command", None)
    if command is None:
        command = (
            body.get("CallbackCommand", RECALL_COMMAND)
            if isinstance(body, Mapping)
            else RECALL_COMMAND
        )
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"{path or callback_path(app)}?{signed_query(app, command=command, **query)}"
    return client.post(url, data=data, content_type="application/json", buffered=True)


def decision_of(response: TestResponse) -> Decision:
    """The :class:`~flask_oa_recall.Decision` a before-callback was answered with.

    Compare it with the decision you expect::

        assert decision_of(response) == Decision.allow(refused_subscribers=["bot_1"])

    :raises AssertionError: if the answer is not HTTP 200 with ``ActionStatus`` ``"OK"`` and
        an int ``ErrorCode`` (a rejection, say); the message shows the answer.
    """
    answer = response.get_json(silent=True)
    if (
        response.status_code != 200
        or not isinstance(answer, dict)
        or answer.get("ActionStatus") != "OK"
        or isinstance(answer.get("ErrorCode"), bool)
        or not isinstance(answer.get("ErrorCode"), int)
    ):
        shown = response.get_data(as_text=True)[:500]
        raise AssertionError(f"not a decision: HTTP {response.status_code} {shown}")
    return Decision(
        answer["ErrorCode"],
        answer.get("ErrorInfo", ""),
        answer.get("MsgBody"),
        answer.get("CloudCustomData"),
        answer.get("RefusedSubscribers_Account"),
    )


@dataclass(frozen=True)
class Rejected:
    """A request the app refused, as sent with :data:`~flask_oa_recall.callback_rejected`."""

    reason: str
    error_code: int
    status: int


@dataclass(frozen=True)
class ReceiverFailure:
    """A receiver that raised, as sent with :data:`~flask_oa_recall.receiver_failed`."""

    receiver: str
    signal_name: str
    exception: BaseException
    delivery_id: str


@dataclass(frozen=True)
class DecisionFailure:
    """A decider that failed, as sent with :data:`~flask_oa_recall.decision_failed`."""

    command: str
    exception: BaseException
    delivery_id: str


@dataclass
class Captured:
    """Everything ``app`` emitted inside a :func:`capture` block, in order of emission."""

    recalls: list[RecallEvent] = field(default_factory=list)
    """The :class:`RecallEvent` s sent with ``messages_recalled``."""
    events: list[OfficialAccountEvent] = field(default_factory=list)
    """The typed Official Account events other than recalls (:class:`MessageSentEvent`...),
    from every typed signal, in order of emission."""
    callbacks: list[Callback] = field(default_factory=list)
    """The :class:`Callback` s sent with ``callback_received`` (every accepted request)."""
    rejections: list[Rejected] = field(default_factory=list)
    """Every refused request."""
    failures: list[ReceiverFailure] = field(default_factory=list)
    """Every receiver that raised."""
    store_failures: list[BaseException] = field(default_factory=list)
    """Every error of the delivery store (the callbacks were dispatched anyway)."""
    decision_failures: list[DecisionFailure] = field(default_factory=list)
    """Every decider that raised, ran late or found no free thread (the fallback was
    answered)."""

    def of(self, event_type: type[_E]) -> list[_E]:
        """The :attr:`events` of one type: ``seen.of(MessageSentEvent)``."""
        return [event for event in self.events if isinstance(event, event_type)]

    @property
    def msg_keys(self) -> list[str]:
        """The MsgKeys of all :attr:`recalls`, in order."""
        return [key for event in self.recalls for key in event.msg_keys]


_captures = itertools.count(1)

#: The typed kinds other than the recall (which has its own list and capture).
_TYPED = [kind for kind in KINDS.values() if kind.command != RECALL_COMMAND]


def _recorder(function: Callable[..., None]) -> Callable[..., None]:
    # The store remembers which receivers (by module and qualname) already handled a message.
    # A capture is a new observer each time, so that a later block (a replay, say) sees what
    # is dispatched inside it rather than being skipped as "already done".
    function.__qualname__ = f"capture[{next(_captures)}]"
    return function


@contextmanager
def capture(app: Flask) -> Iterator[Captured]:
    """Collect everything ``app`` emits inside the block: recalls, callbacks, rejections,
    receiver failures, store failures and decider failures.

    The recorders are ordinary receivers of ``app`` only, connected for the block.
    """
    seen = Captured()

    @_recorder
    def on_recall(sender: Flask, event: RecallEvent, **_: Any) -> None:
        seen.recalls.append(event)

    @_recorder
    def on_event(sender: Flask, event: OfficialAccountEvent, **_: Any) -> None:
        seen.events.append(event)

    @_recorder
    def on_callback(sender: Flask, callback: Callback, **_: Any) -> None:
        seen.callbacks.append(callback)

    def on_rejected(sender: Flask, reason: str, error_code: int, status: int, **_: Any) -> None:
        seen.rejections.append(Rejected(reason, error_code, status))

    def on_failed(
        sender: Flask,
        receiver: str,
        signal_name: str,
        exception: BaseException,
        delivery_id: str,
        **_: Any,
    ) -> None:
        seen.failures.append(ReceiverFailure(receiver, signal_name, exception, delivery_id))

    def on_store_failed(sender: Flask, exception: BaseException, **_: Any) -> None:
        seen.store_failures.append(exception)

    def on_decision_failed(
        sender: Flask, command: str, exception: BaseException, delivery_id: str, **_: Any
    ) -> None:
        seen.decision_failures.append(DecisionFailure(command, exception, delivery_id))

    with ExitStack() as stack:
        stack.enter_context(messages_recalled.connected_to(on_recall, app))
        for kind in _TYPED:
            stack.enter_context(kind.signal.connected_to(on_event, app))
        stack.enter_context(callback_received.connected_to(on_callback, app))
        stack.enter_context(callback_rejected.connected_to(on_rejected, app))
        stack.enter_context(receiver_failed.connected_to(on_failed, app))
        stack.enter_context(store_failed.connected_to(on_store_failed, app))
        stack.enter_context(decision_failed.connected_to(on_decision_failed, app))
        yield seen


@contextmanager
def capture_recalls(app: Flask) -> Iterator[list[RecallEvent]]:
    """Collect the :class:`RecallEvent` s that ``app`` emits inside the block."""
    events: list[RecallEvent] = []

    @_recorder
    def record(sender: Flask, event: RecallEvent, **_: Any) -> None:
        events.append(event)

    with messages_recalled.connected_to(record, app):
        yield events


@contextmanager
def capture_events(app: Flask, *commands: str) -> Iterator[list[OfficialAccountEvent]]:
    """Collect the typed Official Account events (other than recalls) that ``app`` emits inside
    the block; only those of ``commands`` when given
    (``capture_events(app, "OfficialAccount.CallbackAfterSendMsg")``).

    :raises KeyError: for a command that has no typed event.
    """
    kinds = [KINDS[command] for command in commands] if commands else _TYPED
    events: list[OfficialAccountEvent] = []

    @_recorder
    def record(sender: Flask, event: OfficialAccountEvent, **_: Any) -> None:
        events.append(event)

    with ExitStack() as stack:
        for kind in kinds:
            stack.enter_context(kind.signal.connected_to(record, app))
        yield events


@contextmanager
def capture_callbacks(app: Flask) -> Iterator[list[Callback]]:
    """Collect the :class:`Callback` s that ``app`` accepts inside the block."""
    callbacks: list[Callback] = []

    @_recorder
    def record(sender: Flask, callback: Callback, **_: Any) -> None:
        callbacks.append(callback)

    with callback_received.connected_to(record, app):
        yield callbacks
