"""The operator page: kept deliveries, one delivery, and replaying failed or interrupted ones."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    render_template,
    request,
    session,
)
from flask.typing import ResponseReturnValue
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request

from ..cli.deliveries import INTERRUPTED, display_status
from ..config import Settings
from ..delivery import prepare_replay, run
from ..errors import OARecallError, StoreError
from ..state import get_state
from ..store import Delivery, DeliveryBusy, DeliveryStatus, Store

__all__ = ["LIST_WINDOW", "Authorize", "create_admin_blueprint"]

#: An authorization check: given the request, ``True`` lets it through; ``False`` (or
#: ``None``) refuses it with 403; a response (a redirect to a login page...) is answered as is.
Authorize = Callable[[Request], "bool | ResponseReturnValue | None"]

#: How many of the newest kept deliveries the list reads from the store and filters.
LIST_WINDOW = 1000

#: The statuses the list can filter on.
STATUSES = (
    DeliveryStatus.FAILED,
    INTERRUPTED,
    DeliveryStatus.PENDING,
    DeliveryStatus.DONE,
    DeliveryStatus.DUPLICATE,
)

_CSRF_SALT = "flask-oa-recall.admin.replay"
_CSRF_SESSION_KEY = "_oa_recall_admin_csrf"
_CSRF_MAX_AGE = 3600
_FINISHED = (DeliveryStatus.DONE, DeliveryStatus.DUPLICATE)


@dataclass(frozen=True)
class Filters:
    """The list's filters, read from the query string."""

    status: str = ""
    command: str = ""
    account: str = ""
    since: datetime | None = None
    until: datetime | None = None

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return bool(self.status or self.command or self.account or self.since or self.until)

    def keeps(self, row: Row) -> bool:
        """Whether ``row`` passes every filter."""
        delivery = row.delivery
        if self.status and row.status != self.status:
            return False
        if self.command and delivery.command != self.command:
            return False
        if self.account and self.account.lower() not in (row.account or "").lower():
            return False
        if self.since and delivery.received_at < self.since.timestamp():
            return False
        return not (self.until and delivery.received_at >= self.until.timestamp())


@dataclass(frozen=True)
class Row:
    """One delivery as the list shows it."""

    delivery: Delivery
    status: str
    account: str | None


def _account_of(delivery: Delivery) -> str | None:
    """The Official Account: kept with a recall, else read from the body if it names one."""
    if delivery.official_account is not None:
        return delivery.official_account
    try:
        account = json.loads(delivery.body).get("Official_Account")
    except (ValueError, AttributeError):
        return None
    return account if isinstance(account, str) else None


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did, for the detail page's banner."""

    ok: bool
    title: str
    detail: str = ""


def _utc_input(value: str | None) -> datetime | None:
    """A ``datetime-local`` field's value (``YYYY-MM-DDTHH:MM``, or a date), read as UTC."""
    if not value:
        return None
    for layout in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, layout).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    abort(400, description=f"{value!r} is not a time: use YYYY-MM-DDTHH:MM (UTC).")


def _filters() -> Filters:
    status = request.args.get("status", "")
    if status and status not in STATUSES:
        abort(400, description=f"Unknown status {status!r}.")
    return Filters(
        status=status,
        command=request.args.get("command", "").strip(),
        account=request.args.get("account", "").strip(),
        since=_utc_input(request.args.get("since")),
        until=_utc_input(request.args.get("until")),
    )


def _statuses_to_read(filters: Filters) -> list[str] | None:
    if filters.status == INTERRUPTED:
        return [DeliveryStatus.PENDING]
    return [filters.status] if filters.status else None


def _app_store() -> tuple[Flask, Settings, Store]:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    settings = state.settings(app.config)
    return app, settings, state.store(settings)


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _pretty_body(body: str) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


def _query_without_sign(query: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in query if name.lower() != "sign"]


def _serializer() -> URLSafeTimedSerializer:
    secret = current_app.secret_key
    if not secret:
        abort(
            500,
            description="Replaying from this page needs the app's SECRET_KEY (for its CSRF token).",
        )
    return URLSafeTimedSerializer(secret, salt=_CSRF_SALT)


def _csrf_token(delivery_id: str) -> str | None:
    """A token for the replay form of ``delivery_id``, bound to this session."""
    if not current_app.secret_key:
        return None
    nonce = session.get(_CSRF_SESSION_KEY)
    if not isinstance(nonce, str):
        nonce = session[_CSRF_SESSION_KEY] = secrets.token_urlsafe(16)
    return str(_serializer().dumps([nonce, delivery_id]))


def _check_csrf(delivery_id: str) -> None:
    token = request.form.get("csrf_token", "")
    try:
        nonce, signed_id = _serializer().loads(token, max_age=_CSRF_MAX_AGE)
    except (BadSignature, ValueError, TypeError):
        abort(400, description="The form has expired or did not come from this page; try again.")
    if nonce != session.get(_CSRF_SESSION_KEY) or signed_id != delivery_id:
        abort(400, description="The form has expired or did not come from this page; try again.")


def _failed_receivers(delivery: Delivery) -> list[str]:
    return sorted(name for name, result in delivery.receivers.items() if result != "ok")


def _replay(delivery_id: str) -> ReplayResult:
    """Replay one delivery through the same steps as ``flask oa-recall replay``."""
    app, settings, store = _app_store()
    try:
        kept = store.get(delivery_id)
    except StoreError as err:
        return ReplayResult(False, "Cannot replay it.", str(err))
    if kept is None:
        abort(404, description="No such delivery is kept.")
    if kept.status in _FINISHED:
        return ReplayResult(True, f"Already {kept.status}: nothing to replay.")
    try:
        prepared = prepare_replay(store, delivery_id, settings.lease_seconds)
    except KeyError:
        abort(404)
    except DeliveryBusy:
        return ReplayResult(
            False,
            "Busy: a live worker is dispatching it right now.",
            f"Its lease runs until {_utc(kept.lease_until)} UTC; try again after that.",
        )
    except OARecallError as err:
        return ReplayResult(False, "Cannot replay it.", str(err))
    outcome = run(app, store, prepared, settings.slow_dispatch_seconds)
    ran = ", ".join(f"{name} {result}" for name, result in sorted(outcome.receivers.items()))
    detail = f"Attempt {prepared.attempt}; ran: {ran or 'nothing'}."
    if outcome.error:
        detail += f" Error: {outcome.error}"
    try:
        recorded = store.get(delivery_id)
    except StoreError:
        recorded = None
    if recorded is None or recorded.status != outcome.status:
        return ReplayResult(False, f"{outcome.status}, but not recorded in the store.", detail)
    return ReplayResult(outcome.status in _FINISHED, f"Replayed: now {outcome.status}.", detail)


def _page(status: int, title: str, message: str) -> Response:
    body = render_template("oa_recall_admin/message.html", title=title, message=message)
    return Response(body, status=status, mimetype="text/html")


def _refuse(message: str) -> Response:
    return _page(403, "Not allowed", message)


def create_admin_blueprint(
    authorize: Authorize | None = None, *, name: str = "oa_recall_admin", page_size: int = 50
) -> Blueprint:
    """Build the operator page; the host mounts it at a prefix of its choice::

        from flask_oa_recall.admin import create_admin_blueprint

        def is_operator(request):
            return current_user.is_authenticated and current_user.is_admin

        app.register_blueprint(
            create_admin_blueprint(authorize=is_operator), url_prefix="/oa-recall-admin"
        )

    It lists kept deliveries (filters: status, command, Official Account, time range), shows one
    (its body, its query without ``Sign``, each receiver's outcome) and replays failed or
    interrupted ones, only the receivers that failed. Replaying is a POST with a CSRF token
    signed with the app's ``SECRET_KEY`` and bound to the session.

    :param authorize: called with the request before every view. ``True`` lets it through;
        ``False`` or ``None`` answers 403; a response (a redirect to a login page) is answered
        as is. Without it, every request is refused: the page is off.
    :param name: the blueprint's name, the prefix of its endpoints.
    :param page_size: at most this many deliveries per list page.
    """
    bp = Blueprint(name, __name__, template_folder="templates")

    @bp.before_request
    def _authorize() -> ResponseReturnValue | None:
        if authorize is None:
            return _refuse(
                "The operator page is off: the app mounted it without an authorization check."
                " Pass authorize=... to create_admin_blueprint()."
            )
        verdict = authorize(request)
        if verdict is True:
            return None
        if verdict is False or verdict is None:
            return _refuse("You are not allowed to see this page.")
        return verdict

    @bp.after_request
    def _no_store(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @bp.errorhandler(HTTPException)
    def _error(err: HTTPException) -> Response:
        return _page(err.code or 500, err.name, err.description or "")

    @bp.get("/")
    def deliveries() -> str:
        filters = _filters()
        _, _, store = _app_store()
        try:
            found = store.deliveries(statuses=_statuses_to_read(filters), limit=LIST_WINDOW)
        except StoreError as err:
            abort(503, description=f"The delivery store cannot be read: {err}")
        now = time.time()
        rows = [Row(d, display_status(d, now), _account_of(d)) for d in found]
        commands = sorted({r.delivery.command for r in rows} | {filters.command} - {""})
        matching = [r for r in rows if filters.keeps(r)]
        return render_template(
            "oa_recall_admin/list.html",
            rows=matching[:page_size],
            matching=len(matching),
            read=len(found),
            window=LIST_WINDOW,
            filters=filters,
            statuses=STATUSES,
            commands=commands,
            utc=_utc,
        )

    @bp.get("/<delivery_id>")
    def delivery(delivery_id: str) -> str:
        return _detail(delivery_id, None)

    @bp.post("/<delivery_id>/replay")
    def replay(delivery_id: str) -> str:
        _check_csrf(delivery_id)
        return _detail(delivery_id, _replay(delivery_id))

    def _detail(delivery_id: str, result: ReplayResult | None) -> str:
        _, _, store = _app_store()
        try:
            kept = store.get(delivery_id)
        except StoreError as err:
            abort(503, description=f"The delivery store cannot be read: {err}")
        if kept is None:
            abort(404, description="No such delivery is kept.")
        status = display_status(kept, time.time())
        replayable = status in (DeliveryStatus.FAILED, INTERRUPTED)
        return render_template(
            "oa_recall_admin/detail.html",
            d=kept,
            status=status,
            account=_account_of(kept),
            body=_pretty_body(kept.body),
            query=_query_without_sign(kept.query.items()),
            receivers=sorted(kept.receivers.items()),
            failed=_failed_receivers(kept),
            replayable=replayable,
            csrf_token=_csrf_token(delivery_id) if replayable else None,
            result=result,
            utc=_utc,
        )

    return bp
