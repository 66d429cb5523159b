"""The callback route in front of Flask's request dispatch, for the requests that do not need it.

Flask's dispatch (a request object, a request context, URL matching, request hooks, a response
object and its headers) costs about as much CPU per callback as verifying, loading and keeping
it. :class:`DirectRoute` wraps ``app.wsgi_app`` and answers a *plain* callback itself, in an
app context: the same checks, store and signals as the view, through the same code
(:func:`~flask_oa_recall.blueprint.serve`).

A request is plain when nothing the host set up could see the difference: a ``POST`` to the
route's exact path, with a ``Content-Length`` within the host's ``MAX_CONTENT_LENGTH`` and no
``Transfer-Encoding``, a query with nothing to unquote, ``OA_RECALL_DIRECT`` on, no
``before_request``, ``after_request``, ``teardown_request`` or URL value preprocessor that
applies to the route, no receiver of Flask's request signals, no host or subdomain matching,
and no test client keeping the request context. Any other request goes to Flask, unchanged.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flask import Flask, Response, current_app, has_app_context
from flask.signals import (
    got_request_exception,
    request_finished,
    request_started,
    request_tearing_down,
)
from werkzeug.exceptions import InternalServerError

from .arrival import Arrival, plain_query_pairs
from .config import Settings
from .responses import OK_BODY
from .state import OARecallState, get_state

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Answers an arrival in an app context: its response, or ``None`` for the plain ``OK``.
Serve = Callable[[Flask, OARecallState, Settings, Arrival], "Response | None"]

__all__ = ["DirectRoute", "install"]

logger = logging.getLogger(__name__)

_OK_STATUS = "200 OK"
_OK_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(OK_BODY)))]
_REQUEST_SIGNALS = (request_started, request_finished, request_tearing_down, got_request_exception)


def _scopes(blueprint: str) -> tuple[str | None, ...]:
    """The hook scopes Flask applies to the blueprint's routes: the app's and each blueprint's
    from the outermost (``"a.b"`` is registered inside ``"a"``)."""
    parts = blueprint.split(".")
    return (None, *(".".join(parts[: i + 1]) for i in range(len(parts))))


class DirectRoute:
    """WSGI middleware for ``app.wsgi_app``: plain callbacks to the routes it knows are answered
    without Flask's request dispatch; every other request goes to ``wsgi_app``.

    :param app: the Flask app the callbacks are for.
    :param wsgi_app: the WSGI app it wraps (``app.wsgi_app`` when installed).
    :param serve: answers a plain callback (:func:`flask_oa_recall.blueprint.serve`).
    """

    def __init__(self, app: Flask, wsgi_app: WSGIApplication, serve: Serve) -> None:
        # Weakly: the app holds this middleware (``app.wsgi_app``), and a cycle would keep an
        # app and its store alive until the garbage collector runs.
        self._app = weakref.ref(app)
        # ``app.wsgi_app`` as a bound method holds the app too: keep its function instead.
        self._method: Callable[[Flask, WSGIEnvironment, StartResponse], Iterable[bytes]] | None
        self._wrapped: WSGIApplication | None
        if getattr(wsgi_app, "__self__", None) is app:
            self._method, self._wrapped = wsgi_app.__func__, None  # type: ignore[attr-defined]
        else:
            self._method, self._wrapped = None, wsgi_app
        self.serve = serve
        #: Path to the hook scopes of the blueprint registered there.
        self.routes: dict[str, tuple[str | None, ...]] = {}

    def add(self, path: str, blueprint: str) -> None:
        """Answer plain callbacks to ``path``, where ``blueprint`` (its dotted name) serves
        the callback route."""
        self.routes[path] = _scopes(blueprint)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        app = self._app()
        if app is None:
            raise RuntimeError("the Flask app of this callback route no longer exists")
        scopes = self.routes.get(environ.get("PATH_INFO", ""))
        if scopes is None or environ.get("REQUEST_METHOD") != "POST":
            return self._through_flask(app, environ, start_response)
        state = get_state(app)
        settings = state.settings(app.config)
        if not settings.direct:
            return self._through_flask(app, environ, start_response)
        declared = self._declared(app, environ)
        if declared is None or not self._plain(app, scopes, environ):
            return self._through_flask(app, environ, start_response)
        pairs = plain_query_pairs(environ.get("QUERY_STRING", ""))
        if pairs is None:
            return self._through_flask(app, environ, start_response)
        stream = environ["wsgi.input"]
        arrival = Arrival("POST", environ, declared, lambda: stream, pairs)
        try:
            if has_app_context() and current_app._get_current_object() is app:  # type: ignore[attr-defined]
                response = self.serve(app, state, settings, arrival)
            else:
                with app.app_context():
                    response = self.serve(app, state, settings, arrival)
        except Exception:
            propagate = app.config.get("PROPAGATE_EXCEPTIONS")
            if propagate or (propagate is None and (app.testing or app.debug)):
                raise
            logger.exception("the direct callback route failed on %s", environ.get("PATH_INFO"))
            return InternalServerError()(environ, start_response)
        if response is None:
            start_response(_OK_STATUS, list(_OK_HEADERS))
            return [OK_BODY]
        return response(environ, start_response)

    def _through_flask(
        self, app: Flask, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """What the wrapped WSGI app answers."""
        if self._method is not None:
            return self._method(app, environ, start_response)
        assert self._wrapped is not None
        return self._wrapped(environ, start_response)

    @staticmethod
    def _declared(app: Flask, environ: WSGIEnvironment) -> int | None:
        """The ``Content-Length`` if the body is plain: given, within ``MAX_CONTENT_LENGTH``
        and not chunked."""
        length = environ.get("CONTENT_LENGTH")
        if not length or not length.isascii() or not length.isdigit():
            return None
        if "HTTP_TRANSFER_ENCODING" in environ:
            return None
        declared = int(length)
        most = app.config.get("MAX_CONTENT_LENGTH")
        if most is not None and declared > most:
            return None  # Flask's own answer (the view's 413 envelope)
        return declared

    @staticmethod
    def _plain(app: Flask, scopes: tuple[str | None, ...], environ: WSGIEnvironment) -> bool:
        """Whether nothing the host set up on ``app`` would run for this request in Flask."""
        if app.url_map.host_matching or app.subdomain_matching:
            return False
        if "werkzeug.debug.preserve_context" in environ:
            return False  # a test client that keeps the request context for the test to read
        for hooks in (
            app.before_request_funcs,
            app.after_request_funcs,
            app.teardown_request_funcs,
            app.url_value_preprocessors,
        ):
            for scope in scopes:
                if hooks.get(scope):
                    return False
        return not any(signal.receivers for signal in _REQUEST_SIGNALS)


_installed: weakref.WeakKeyDictionary[Flask, DirectRoute] = weakref.WeakKeyDictionary()


def install(app: Flask, serve: Serve, path: str, blueprint: str) -> None:
    """Serve plain callbacks to ``path`` directly: put a :class:`DirectRoute` in front of
    ``app.wsgi_app`` (once per app), and add the route to it."""
    route = _installed.get(app)
    if route is None:
        route = _installed[app] = DirectRoute(app, app.wsgi_app, serve)
        app.wsgi_app = route  # type: ignore[method-assign]
    route.add(path, blueprint)
