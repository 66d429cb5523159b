"""``deliveries``, ``replay`` and ``prune``: look after kept deliveries.

What these commands print comes from the store, which never holds a token or a ``Sign`` (the
kept query has ``Sign`` removed), and they print neither the query nor the body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, NoReturn

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from ..config import Settings
from ..delivery import prepare_replay, run
from ..errors import DeliveryBusy, OARecallError, StoreError, UnknownDelivery
from ..events import RECALL_COMMAND
from ..guarded import GuardedStore
from ..state import get_state
from ..store import Delivery, DeliveryStatus, Store

__all__ = [
    "INTERRUPTED",
    "deliveries_command",
    "display_status",
    "prune_command",
    "replay_command",
]

#: How a pending delivery whose lease ran out is shown: its worker died or lost the store.
INTERRUPTED = "interrupted"

_ERROR_WIDTH = 60
_REPLAY_BATCH = 10_000
_SECONDS_PER_DAY = 86_400.0
_FINISHED = (DeliveryStatus.DONE, DeliveryStatus.DUPLICATE)


def display_status(delivery: Delivery, now: float) -> str:
    """The kept status, except that a pending delivery whose lease ran out is ``interrupted``."""
    if delivery.status == DeliveryStatus.PENDING and delivery.lease_until <= now:
        return INTERRUPTED
    return delivery.status


def _app_and_store() -> tuple[Flask, Settings, Store]:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    settings = state.settings(app.config)
    return app, settings, state.store(settings)


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def _short_command(command: str) -> str:
    if command == RECALL_COMMAND:
        return "recall"
    return command.replace(".Callback", ".", 1)


def _failed_receivers(delivery: Delivery) -> list[str]:
    return sorted(name for name, result in delivery.receivers.items() if result != "ok")


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _statuses(failed: bool, pending: bool) -> list[str] | None:
    chosen = []
    if failed:
        chosen.append(DeliveryStatus.FAILED)
    if pending:
        chosen.append(DeliveryStatus.PENDING)
    return chosen or None


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _as_json(delivery: Delivery, now: float) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "received_at": _iso(delivery.received_at),
        "sdk_app_id": delivery.sdk_app_id,
        "command": delivery.command,
        "official_account": delivery.official_account,
        "msg_keys": list(delivery.msg_keys),
        "status": display_status(delivery, now),
        "attempts": delivery.attempts,
        "receivers": dict(delivery.receivers),
        "failed_receivers": _failed_receivers(delivery),
        "last_error": delivery.last_error,
        "lease_until": _iso(delivery.lease_until) if delivery.lease_until else None,
    }


_HEADER = (
    "ID",
    "RECEIVED (UTC)",
    "COMMAND",
    "OFFICIAL ACCOUNT",
    "KEYS",
    "STATUS",
    "ATTEMPTS",
    "FAILED RECEIVERS",
    "LAST ERROR",
)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _row(delivery: Delivery, now: float) -> tuple[str, ...]:
    is_recall = delivery.command == RECALL_COMMAND
    return (
        delivery.id,
        _utc(delivery.received_at),
        _short_command(delivery.command),
        delivery.official_account or "-",
        str(len(delivery.msg_keys)) if is_recall else "-",
        display_status(delivery, now),
        str(delivery.attempts),
        ",".join(_failed_receivers(delivery)) or "-",
        _truncate(_error_text(delivery), _ERROR_WIDTH) if delivery.last_error else "-",
    )


def _error_text(delivery: Delivery) -> str:
    """The last error without the receiver's name in front: the table shows that already."""
    error = delivery.last_error or ""
    name, sep, rest = error.partition(": ")
    return rest if sep and delivery.receivers.get(name) == "failed" else error


@click.command("deliveries")
@with_appcontext
@click.option("--failed", is_flag=True, help="Only deliveries whose receivers failed.")
@click.option("--pending", is_flag=True, help="Only unfinished ones (in flight or interrupted).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most N."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deliveries_command(failed: bool, pending: bool, limit: int, as_json: bool) -> None:
    """List kept deliveries, newest first.

    A pending delivery whose lease ran out is shown as "interrupted": the worker that held it
    died (or lost the store) mid-dispatch; "flask oa-recall replay --pending" finishes it.
    """
    _, _, store = _app_and_store()
    try:
        found = store.deliveries(statuses=_statuses(failed, pending), limit=limit)
    except StoreError as err:
        _fail(f"cannot read the delivery store: {err}")
    now = time.time()
    if as_json:
        for delivery in found:
            click.echo(json.dumps(_as_json(delivery, now), ensure_ascii=False))
        return
    if not found:
        click.echo("No deliveries kept." if not (failed or pending) else "No such deliveries.")
        return
    for line in _table([_HEADER, *(_row(d, now) for d in found)]):
        click.echo(line)


def _line(delivery_id: str, status: str, detail: str) -> str:
    return f"{delivery_id}  {status.ljust(9)}  {detail}"


def _replay_one(app: Flask, settings: Settings, store: Store, delivery_id: str) -> tuple[bool, str]:
    """Replay one delivery; return whether it is now finished, and the line to print."""
    try:
        kept = store.get(delivery_id)
        if kept is None:
            raise UnknownDelivery(delivery_id)
        if kept.status in _FINISHED:
            # Replaying it would run nothing and only relabel it a duplicate.
            return True, _line(delivery_id, kept.status, "already finished; nothing to replay")
        prepared = prepare_replay(store, delivery_id, settings.lease_seconds)
    except UnknownDelivery:
        return False, _line(delivery_id, "unknown", "no such delivery")
    except DeliveryBusy:
        until = f" until {_utc(kept.lease_until)} UTC" if kept else ""
        return False, _line(delivery_id, "busy", f"leased by a live worker{until}; skipped")
    except OARecallError as err:
        return False, _line(delivery_id, "error", f"cannot replay it: {err}")

    outcome = run(app, store, prepared, settings.slow_dispatch_seconds)
    status = outcome.status
    try:
        kept = store.get(delivery_id)
    except StoreError:
        kept = None
    if kept is None or kept.status != outcome.status:
        # ``finish`` could not record the outcome; it logged why and sent ``store_failed``.
        status = f"{outcome.status} (not recorded in the store; see the log)"
    ran = ", ".join(f"{name} {result}" for name, result in sorted(outcome.receivers.items()))
    detail = f"attempt {prepared.attempt}; ran: {ran or 'nothing'}"
    if outcome.error:
        detail += f"; error: {_truncate(outcome.error, 2 * _ERROR_WIDTH)}"
    line = _line(delivery_id, status, detail)
    finished = outcome.status in (DeliveryStatus.DONE, DeliveryStatus.DUPLICATE)
    return finished and kept is not None and kept.status == outcome.status, line


@click.command("replay")
@with_appcontext
@click.option("--failed", is_flag=True, help="Replay every failed delivery.")
@click.option("--pending", is_flag=True, help="Replay every interrupted delivery.")
@click.argument("ids", nargs=-1)
def replay_command(failed: bool, pending: bool, ids: tuple[str, ...]) -> None:
    """Dispatch kept deliveries again, oldest first.

    Only the receivers that have not succeeded run again, and only for messages not yet
    finished. --pending takes the interrupted deliveries (whose lease ran out) and leaves the
    ones a live worker is dispatching right now alone. A delivery named by ID that a live worker
    holds is reported busy and skipped. The exit status is 1 when a delivery still fails, is
    busy or is unknown.
    """
    if not (failed or pending or ids):
        raise click.UsageError("name delivery IDs, or use --failed and/or --pending.")
    app, settings, store = _app_and_store()
    if isinstance(store, GuardedStore) and store.journal is not None and (failed or pending):
        try:
            restored = store.restore(settings.lease_seconds)
        except StoreError as err:
            _fail(f"cannot bring back journalled deliveries: {err}")
        if restored.brought_back:
            click.echo(
                f"Brought back {len(restored.brought_back)} deliveries the store had lost, from"
                f" this host's journal ({store.journal.path}); replaying them as failed."
            )
    chosen: list[str] = []
    in_flight = 0
    statuses = _statuses(failed, pending)
    if statuses:
        try:
            found = store.deliveries(statuses=statuses, limit=_REPLAY_BATCH)
        except StoreError as err:
            _fail(f"cannot read the delivery store: {err}")
        now = time.time()
        for delivery in reversed(found):
            if delivery.status == DeliveryStatus.PENDING and delivery.lease_until > now:
                in_flight += 1
            else:
                chosen.append(delivery.id)
    chosen.extend(i for i in ids if i not in chosen)
    if in_flight:
        click.echo(f"Left alone {in_flight} pending deliveries that live workers hold.")
    if not chosen:
        click.echo("Nothing to replay.")
        return
    unfinished = 0
    for delivery_id in chosen:
        finished, line = _replay_one(app, settings, store, delivery_id)
        unfinished += not finished
        click.echo(line)
    click.echo(f"Replayed {len(chosen)}: {len(chosen) - unfinished} finished, {unfinished} not.")
    if unfinished:
        raise SystemExit(1)


@click.command("prune")
@with_appcontext
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    required=True,
    help="Drop deliveries received more than DAYS days ago.",
    metavar="DAYS",
)
@click.option("--include-failed", is_flag=True, help="Drop failed ones too (never pending ones).")
def prune_command(days: float, include_failed: bool) -> None:
    """Drop finished (done and duplicate) deliveries older than DAYS days."""
    _, _, store = _app_and_store()
    before = time.time() - days * _SECONDS_PER_DAY
    try:
        dropped = store.prune(before=before, include_failed=include_failed)
    except StoreError as err:
        _fail(f"cannot prune the delivery store: {err}")
    kinds = "done, duplicate and failed" if include_failed else "done and duplicate"
    click.echo(f"Dropped {dropped} {kinds} deliveries received before {_utc(before)} UTC.")
