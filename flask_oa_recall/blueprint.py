"""The callback route: verify, parse, keep, dispatch, answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from flask import Blueprint, Flask, Response, current_app, request
from flask.sansio.blueprints import BlueprintSetupState

from .arrival import Arrival, plain_query_pairs, read_body
from .cli import CLI_GROUP, add_commands
from .config import Settings
from .deciders import Verdict, decide, is_before_command, send_decision_failed
from .decisions import Decision
from .delivery import new_delivery_id, run, start
from .direct import install as install_direct_route
from .errors import CallbackRejected
from .events import RECALL_COMMAND
from .kinds import KINDS, Event, EventKind
from .logging import log_rejection
from .parsing import build_callback, parse_body, resolve_command
from .responses import REJECTIONS, answer_response, ok_response, reject_response
from .security import check_sdk_app_id, check_signature, read_query
from .signals import callback_received, callback_rejected
from .state import OARecallState, get_state, setup_app
from .store import NewDelivery
from .tracing import annotate_current, decision_attributes

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["create_blueprint"]

logger = logging.getLogger(__name__)

_ALLOW = Decision()

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _query_pairs() -> list[tuple[str, str]]:
    """The query's name/value pairs in order; raw bytes that are not UTF-8 become U+FFFD."""
    # WSGI gives the raw query's bytes as latin-1 text: ASCII only when the bytes are.
    plain = plain_query_pairs(request.environ.get("QUERY_STRING", ""))
    if plain is not None:
        return plain
    try:
        return list(request.args.items(multi=True))
    except UnicodeDecodeError:
        # Werkzeug decodes the raw query string as UTF-8 and raises on other bytes. gunicorn
        # refuses raw non-ASCII in a URL, but other servers pass it on.
        text = request.query_string.decode("utf-8", "replace")
        return parse_qsl(text, keep_blank_values=True, errors="replace")


def _reject(app: Flask, err: CallbackRejected, environ: Mapping[str, Any]) -> Response:
    rejection = err.rejection
    log_rejection(err, environ)
    try:
        callback_rejected.send(
            app,
            _async_wrapper=app.ensure_sync,
            reason=err.reason,
            error_code=rejection.error_code,
            status=rejection.status,
        )
    except Exception:
        logger.exception("a receiver of callback_rejected raised; ignored")
    annotate_current(outcome="rejected", reason=err.reason)
    return reject_response(rejection, err.info)


@dataclass(slots=True)
class Verified:
    """A request that passed the checks: authenticated, ours, a JSON object with a command."""

    raw: bytes
    query: dict[str, str]
    kept_query: dict[str, str]
    sdk_app_id: int
    body: dict[str, Any]
    command: str


def verify(settings: Settings, arrival: Arrival) -> Verified:
    """Read and check the request: method, body size, SdkAppid, ``Sign``, JSON, command.

    :raises CallbackRejected: at the first check that fails.
    """
    if arrival.method != "POST":
        raise CallbackRejected("method_not_allowed")
    raw = read_body(arrival.open_body, arrival.declared, settings.max_body_bytes)
    query, kept_query = read_query(arrival.pairs)
    sdk_app_id = check_sdk_app_id(query, settings.sdk_app_ids)
    tokens = settings.tokens.get(sdk_app_id)
    if tokens:
        check_signature(query, tokens, time.time(), settings.max_skew_seconds)
    body = parse_body(raw)
    command = resolve_command(query, body)
    return Verified(raw, query, kept_query, sdk_app_id, body, command)


@dataclass(slots=True)
class Plan:
    """What the keep policy decided for one verified callback.

    :param kind: the command's typed kind, if it has one.
    :param typed: load the body into its typed event (the recall always; another typed command
        when a receiver of its signal is connected for the app).
    :param listened: a receiver of ``callback_received`` or of the typed signal is connected.
    :param keep: write the delivery to the store (see :meth:`Settings.keeps`).
    """

    kind: EventKind | None
    typed: bool
    listened: bool
    keep: bool

    @property
    def idle(self) -> bool:
        """Nothing to run and nothing to keep: the answer is all there is to do."""
        return not (self.listened or self.keep)


def plan(app: Flask, settings: Settings, command: str) -> Plan:
    """Apply the keep policy to ``command`` for ``app``; no store access, no body load."""
    kind = KINDS.get(command)
    typed_listened = kind is not None and kind.signal.has_receivers_for(app)
    listened = typed_listened or callback_received.has_receivers_for(app)
    typed = kind is not None and (typed_listened or command == RECALL_COMMAND)
    return Plan(kind, typed, listened, settings.keeps(command, listened))


def _new_delivery(
    verified: Verified, event: Event | None, delivery_id: str, at: float
) -> NewDelivery:
    return NewDelivery(
        id=delivery_id,
        received_at=at,
        sdk_app_id=verified.sdk_app_id,
        command=verified.command,
        query=verified.kept_query,
        body=verified.raw.decode("utf-8"),
        official_account=event.official_account if event else None,
        msg_keys=event.dedup_keys if event else (),
    )


def _request_stream() -> IO[bytes]:
    return request.stream


def callback() -> Response:
    """Handle one request to the callback URL: verify, apply the keep policy, keep, dispatch,
    answer; a before-callback is answered by its decider first. In a span
    ``oa_recall.callback`` when tracing."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    arrival = Arrival(
        request.method, request.environ, request.content_length, _request_stream, _query_pairs()
    )
    return serve(app, state, state.settings(app.config), arrival) or ok_response()


def serve(
    app: Flask, state: OARecallState, settings: Settings, arrival: Arrival
) -> Response | None:
    """Answer ``arrival`` (in an app context): its response, or ``None`` for the plain ``OK``
    (HTTP 200, :data:`~flask_oa_recall.responses.OK_BODY`), which each route writes its own
    way."""
    tracer = state.tracer()
    if tracer is None:
        return _handle(app, state, settings, None, arrival)
    with tracer.start_as_current_span("oa_recall.callback"):
        return _handle(app, state, settings, tracer, arrival)


def _handle(
    app: Flask,
    state: OARecallState,
    settings: Settings,
    tracer: Tracer | None,
    arrival: Arrival,
) -> Response | None:
    arrived = time.monotonic()
    try:
        if tracer is None:
            verified = verify(settings, arrival)
        else:
            with tracer.start_as_current_span("oa_recall.verify"):
                verified = verify(settings, arrival)
        chosen = plan(app, settings, verified.command)
        before = is_before_command(verified.command)
        if chosen.idle and not before:
            _observe(state, tracer, verified.command, "acknowledged", None)
            return None
        received_at = time.time()
        delivery_id = new_delivery_id(received_at)
        event = None
        if chosen.typed:
            assert chosen.kind is not None
            event = chosen.kind.load(
                verified.body, verified.query, verified.sdk_app_id, delivery_id
            )
    except CallbackRejected as err:
        return _reject(app, err, arrival.environ)
    if tracer is not None:
        annotate_current(
            command=verified.command, sdk_app_id=verified.sdk_app_id, delivery_id=delivery_id
        )
    delivery = _new_delivery(verified, event, delivery_id, received_at)
    if before:
        deadline = arrived + settings.decision_seconds
        return _answer_before(app, state, settings, delivery, verified, chosen, deadline, arrival)
    return _keep_and_dispatch(
        app, state, tracer, settings, delivery, event, verified.body, chosen.keep
    )


def _observe(
    state: OARecallState,
    tracer: Tracer | None,
    command: str,
    outcome: str,
    received_at: float | None,
) -> None:
    """Count the callback's outcome (metrics on) and put it on its span (tracing on)."""
    if state.metrics is not None:
        state.metrics.observe(command, outcome, received_at)
    if tracer is not None:
        annotate_current(outcome=outcome)


def _keep_and_dispatch(
    app: Flask,
    state: OARecallState,
    tracer: Tracer | None,
    settings: Settings,
    delivery: NewDelivery,
    event: Event | None,
    body: Mapping[str, Any],
    keep: bool,
) -> Response | None:
    store = state.store(settings) if keep else None
    prepared = start(
        app, store, delivery, event, body, delivery.query, settings.lease_seconds, tracer=tracer
    )

    if settings.dispatch == "after_response" and prepared.kept:
        response = ok_response()

        def dispatch_after_response() -> None:
            with app.app_context():
                try:
                    outcome = run(app, store, prepared, settings.slow_dispatch_seconds, soon=True)
                    _observe(state, None, delivery.command, outcome.status, delivery.received_at)
                except Exception:
                    logger.exception("dispatch of delivery %s failed; it stays kept", delivery.id)

        response.call_on_close(dispatch_after_response)
        return response

    outcome = run(app, store, prepared, settings.slow_dispatch_seconds, soon=True, tracer=tracer)
    if keep and not prepared.kept and outcome.error is not None:
        _observe(state, tracer, delivery.command, "not_kept", delivery.received_at)
        # Not a rejection (the receivers ran, store_failed was sent): the sender is asked to
        # send it again because nothing kept the failure for a replay.
        return reject_response(REJECTIONS["delivery_not_kept"])
    _observe(state, tracer, delivery.command, outcome.status, delivery.received_at)
    return None


def _answer_before(
    app: Flask,
    state: OARecallState,
    settings: Settings,
    delivery: NewDelivery,
    verified: Verified,
    chosen: Plan,
    deadline: float,
    arrival: Arrival,
) -> Response:
    """Answer a before-callback with its decider's decision (allow when it has none), by
    ``deadline`` and without touching the store. ``decision_failed``, keeping the delivery (as
    the keep policy says) and ``callback_received`` come after the answer went out."""
    body = verified.body
    decider = state.deciders.get(delivery.command)
    if decider is None:
        verdict = Verdict(_ALLOW)
    else:
        callback = build_callback(
            delivery.command,
            body,
            delivery.query,
            delivery.sdk_app_id,
            delivery.id,
            delivery.received_at,
        )
        pool = state.decider_pool(settings.decision_threads)
        tracer = state.tracer()
        if tracer is None:
            verdict = decide(
                app, decider, callback, arrival.environ, verified.raw, settings, pool, deadline
            )
        else:
            with tracer.start_as_current_span("oa_recall.decision") as span:
                verdict = decide(
                    app, decider, callback, arrival.environ, verified.raw, settings, pool, deadline
                )
                kind, failure = verdict.decision.kind, verdict.failure
                span.set_attributes(decision_attributes(delivery.command, kind, failure))
    decision = verdict.decision
    if state.metrics is not None:
        state.metrics.decided(delivery.command, decision.kind, verdict.failure)
    _observe(state, state.tracer(), delivery.command, "decided", delivery.received_at)
    response = answer_response(decision.answer()) if decision != _ALLOW else ok_response()
    if chosen.idle and verdict.failure is None:
        return response

    def after_answer() -> None:
        with app.app_context():
            if verdict.failure is not None:
                send_decision_failed(app, delivery.command, verdict.failure, delivery.id)
            if chosen.idle:
                return
            try:
                store = state.store(settings) if chosen.keep else None
                lease = settings.lease_seconds
                prepared = start(app, store, delivery, None, body, delivery.query, lease)
                run(app, store, prepared, settings.slow_dispatch_seconds, soon=True)
            except Exception:
                logger.exception("dispatch of delivery %s failed after its answer", delivery.id)

    response.call_on_close(after_answer)
    return response


def not_found(rest: str = "") -> Response:
    """Paths under the callback route that do not exist get the envelope too."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return _reject(app, CallbackRejected("not_found"), request.environ)


def _on_register(setup: BlueprintSetupState) -> None:
    app = setup.app
    assert isinstance(app, Flask)
    setup_app(app)


_ENDPOINTS = ("callback", "not_found", "not_found_below")


def _endpoint_prefix(setup: BlueprintSetupState) -> str:
    return f"{setup.name_prefix}.{setup.name}.".lstrip(".")


def _any_method(setup: BlueprintSetupState) -> None:
    # Flask gives every rule a finite set of methods, so TRACE, CONNECT or an invented method
    # would get Werkzeug's HTML 405. A rule without a set lets them reach the view's envelope.
    prefix = _endpoint_prefix(setup)
    for endpoint in _ENDPOINTS:
        for rule in setup.app.url_map.iter_rules(prefix + endpoint):
            rule.methods = None


def _remember_route(setup: BlueprintSetupState) -> None:
    # So that send, check and the test helpers find the route under any blueprint name.
    app = setup.app
    assert isinstance(app, Flask)
    state = get_state(app)
    endpoint = _endpoint_prefix(setup) + "callback"
    state.callback_endpoints.add(endpoint)
    for rule in app.url_map.iter_rules(endpoint):
        if rule.host is None and not rule.subdomain and "<" not in rule.rule:
            install_direct_route(app, serve, rule.rule, endpoint.rpartition(".")[0])


def create_blueprint(name: str = "oa_recall") -> Blueprint:
    """Build the blueprint that serves the callback at its ``url_prefix``.

    Registering it also sets the extension up on the app and adds the ``flask oa-recall``
    commands.

    ``OARecall(app)`` registers it at ``OA_RECALL_PATH``; a host that mounts it itself picks
    the prefix::

        app.register_blueprint(create_blueprint(), url_prefix="/hooks/tencent")
    """
    bp = Blueprint(name, __name__, cli_group=CLI_GROUP)
    add_commands(bp.cli)
    bp.add_url_rule("", "callback", callback, methods=_METHODS, provide_automatic_options=False)
    bp.add_url_rule("/", "not_found", not_found, methods=_METHODS, provide_automatic_options=False)
    bp.add_url_rule(
        "/<path:rest>",
        "not_found_below",
        not_found,
        methods=_METHODS,
        provide_automatic_options=False,
    )
    bp.record(_any_method)
    bp.record_once(_on_register)
    bp.record(_remember_route)
    return bp
