"""pytest plugin for host apps' own tests (registered as the ``oa_recall`` entry point).

Installing the package is enough: pytest loads the plugin by itself. The fixtures use the
``app`` fixture the host project defines (as pytest-flask expects), so a complete test of a
receiver is::

    def test_recall_hides_the_message(oa_recall_post, oa_recall_events):
        response = oa_recall_post(msg_keys=["71_1_1698741698"])
        assert response.json["ActionStatus"] == "OK"
        assert oa_recall_events[0].msg_keys == ("71_1_1698741698",)

Fixtures (all function-scoped):

- ``oa_recall_post``: post a signed callback through the app's test client (see
  :func:`~flask_oa_recall.testing.post_callback`).
- ``oa_recall_events``: the :class:`~flask_oa_recall.RecallEvent` s emitted during the test.
- ``oa_recall_typed_events``: the typed Official Account events other than recalls
  (:class:`~flask_oa_recall.MessageSentEvent`...) emitted during the test.
- ``oa_recall_callbacks``: the :class:`~flask_oa_recall.Callback` s accepted during the test.
- ``oa_recall_captured``: everything emitted during the test, rejections and receiver failures
  included (a :class:`~flask_oa_recall.testing.Captured`).
- ``oa_recall_url``: build the signed URL of a callback, for posting with a client of your own.
- ``oa_recall_decide``: post a before-callback and get the
  :class:`~flask_oa_recall.Decision` it was answered with::

      def test_moderation(oa_recall_decide):
          body = before_send_msg_body("forbidden")    # from flask_oa_recall.testing
          assert oa_recall_decide(body) == Decision.deny("Blocked by moderation.")

- ``oa_recall_decision_failures``: the deciders that failed during the test (a list of
  :class:`~flask_oa_recall.testing.DecisionFailure`).
- ``oa_recall_store``: the app's delivery store, opened afresh for the test. The fixtures above
  use it, so with ``OA_RECALL_STORE = "memory://"`` every test starts with an empty store, even
  when the app is created once, at import, and kept from test to test.

Disable it with ``-p no:oa_recall``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from .decisions import Decision
from .events import Callback, OfficialAccountEvent, RecallEvent
from .state import get_state
from .store import Store
from .testing import (
    Captured,
    DecisionFailure,
    before_send_msg_body,
    callback_path,
    capture,
    decision_of,
    post_callback,
    signed_query,
)

__all__ = [
    "OARecallDecide",
    "OARecallPost",
    "OARecallUrl",
    "oa_recall_callbacks",
    "oa_recall_captured",
    "oa_recall_decide",
    "oa_recall_decision_failures",
    "oa_recall_events",
    "oa_recall_post",
    "oa_recall_store",
    "oa_recall_typed_events",
    "oa_recall_url",
]


class OARecallPost(Protocol):
    """The callable ``oa_recall_post`` gives; arguments as for ``post_callback``."""

    def __call__(
        self, body: Mapping[str, Any] | bytes | None = None, **options: Any
    ) -> TestResponse:
        """Post a signed callback; a recall of ``msg_keys`` when ``body`` is ``None``."""


class OARecallDecide(Protocol):
    """The callable ``oa_recall_decide`` gives; options as for ``post_callback``."""

    def __call__(self, body: Mapping[str, Any] | None = None, **options: Any) -> Decision:
        """Post a before-callback (an Official Account before-send of "hello" when ``body`` is
        ``None``) and return the decision it was answered with."""


class OARecallUrl(Protocol):
    """The callable ``oa_recall_url`` gives; arguments as for ``signed_query``."""

    def __call__(self, **query: Any) -> str:
        """The callback route's path with a freshly signed query string."""


@pytest.fixture
def oa_recall_store(app: Flask) -> Iterator[Store]:
    """The store ``app`` keeps deliveries in, opened afresh for this test.

    The app's stores are closed before the test and after it, so the next request opens them
    again: a ``memory://`` store then starts empty, and what one test sent is no duplicate in
    the next. A SQLite or Redis store keeps its data: use ``memory://`` in tests.
    """
    state = get_state(app)
    state.close()
    yield state.store(state.settings(app.config))
    state.close()


@pytest.fixture
def oa_recall_post(app: Flask, oa_recall_store: Store) -> OARecallPost:
    """Post a signed callback to ``app`` in one line: ``oa_recall_post(msg_keys=["1_1_1"])``.

    Keyword arguments are those of :func:`flask_oa_recall.testing.post_callback`
    (``msg_keys``, ``official_account``, ``command``, ``token``, ``request_time``, ...).
    """
    client = app.test_client()

    def post(body: Mapping[str, Any] | bytes | None = None, **options: Any) -> TestResponse:
        return post_callback(client, app, body, **options)

    return post


@pytest.fixture
def oa_recall_captured(app: Flask, oa_recall_store: Store) -> Iterator[Captured]:
    """Everything ``app`` emits during the test: recalls, callbacks, rejections, failures."""
    with capture(app) as seen:
        yield seen


@pytest.fixture
def oa_recall_events(oa_recall_captured: Captured) -> list[RecallEvent]:
    """The recall events ``app`` emits during the test, in order."""
    return oa_recall_captured.recalls


@pytest.fixture
def oa_recall_typed_events(oa_recall_captured: Captured) -> list[OfficialAccountEvent]:
    """The typed Official Account events (other than recalls) ``app`` emits during the test,
    in order; ``oa_recall_captured.of(MessageSentEvent)`` picks one type."""
    return oa_recall_captured.events


@pytest.fixture
def oa_recall_callbacks(oa_recall_captured: Captured) -> list[Callback]:
    """The callbacks (of any command) ``app`` accepts during the test, in order."""
    return oa_recall_captured.callbacks


@pytest.fixture
def oa_recall_url(app: Flask, oa_recall_store: Store) -> OARecallUrl:
    """Build ``/path?signed-query`` for ``app``: ``oa_recall_url(command="...")``."""

    def url(**query: Any) -> str:
        return f"{callback_path(app)}?{signed_query(app, **query)}"

    return url


@pytest.fixture
def oa_recall_decide(oa_recall_post: OARecallPost) -> OARecallDecide:
    """Post a before-callback to ``app`` and get its decision:
    ``oa_recall_decide(before_add_subscriber_body(["bot_1"]))``.

    Raises ``AssertionError`` if the request was not answered with a decision (refused, say).
    """

    def decide(body: Mapping[str, Any] | None = None, **options: Any) -> Decision:
        sent = body if body is not None else before_send_msg_body()
        return decision_of(oa_recall_post(sent, **options))

    return decide


@pytest.fixture
def oa_recall_decision_failures(oa_recall_captured: Captured) -> list[DecisionFailure]:
    """The deciders that raised, ran late or found no free thread during the test, in order."""
    return oa_recall_captured.decision_failures
