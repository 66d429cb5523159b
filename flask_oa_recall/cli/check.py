"""``check``: is this app's callback configuration ready for Tencent's traffic?"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import click
from flask import Flask
from flask.cli import ScriptInfo

from ..config import KEEP_ALL, TENCENT_TIMEOUT_SECONDS, Settings
from ..dispatch import named_receivers
from ..errors import LayoutError, StoreError
from ..events import RECALL_COMMAND
from ..guarded import GuardedStore
from ..kinds import KINDS
from ..payloads import callback_rules
from ..signals import callback_received, messages_recalled
from ..state import get_state
from ..store import Store
from ..store.url import redact_url

__all__ = ["Finding", "check_command", "run_checks"]

OK, WARN, FAIL = "OK", "WARN", "FAIL"

#: Tokens from Tencent's documentation samples and from this project's documentation and
#: examples; anyone can sign with them. (A test checks that every token the docs show is here.)
SAMPLE_TOKENS = frozenset(
    {
        "xxxxyyyy",
        "xxxyyy",
        "change-me",
        "token-from-the-console",
        "console-token",
        "old-token",
        "new-token",
    }
)

_COLOURS = {OK: "green", WARN: "yellow", FAIL: "red"}


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``level`` is ``OK``, ``WARN`` or ``FAIL``."""

    level: str
    topic: str
    text: str


def _sdk_app_ids(settings: Settings) -> Iterator[Finding]:
    ids = ", ".join(str(i) for i in sorted(settings.sdk_app_ids))
    yield Finding(OK, "sdkappid", f"OA_RECALL_SDKAPPID = {ids}")


def _tokens(settings: Settings) -> Iterator[Finding]:
    if not settings.authenticates:
        yield Finding(
            WARN,
            "tokens",
            "AUTHENTICATION IS OFF: OA_RECALL_TOKENS is empty, so anyone who can reach the"
            " callback URL can make this app hide messages. Enable authentication in the Chat"
            " console (Webhook Configuration) and put its token in OA_RECALL_TOKENS.",
        )
        return
    for app_id in sorted(settings.tokens):
        tokens = settings.tokens[app_id]
        if not tokens:
            yield Finding(
                WARN,
                "tokens",
                f"none for SdkAppid {app_id}: its callbacks are NOT authenticated.",
            )
        elif SAMPLE_TOKENS.intersection(tokens):
            yield Finding(
                WARN,
                "tokens",
                f"SdkAppid {app_id} uses a published sample token; anyone can sign with"
                " it. Set the token shown in the Chat console.",
            )
        elif len(tokens) > 1:
            yield Finding(
                OK,
                "tokens",
                f"{len(tokens)} for SdkAppid {app_id} (a rotation is in progress: remove the"
                " old token once the console sends the new one)",
            )
        else:
            yield Finding(OK, "tokens", f"1 for SdkAppid {app_id}")


def _skew(settings: Settings) -> Iterator[Finding]:
    skew = settings.max_skew_seconds
    text = f"OA_RECALL_MAX_SKEW_SECONDS = {skew:g}"
    if not settings.authenticates:
        yield Finding(OK, "skew", f"{text} (unused while authentication is off)")
    elif skew < 5:
        yield Finding(
            WARN,
            "skew",
            f"{text}: a clock a few seconds off refuses every genuine callback (401); keep the"
            " server's clock synchronised (NTP) or widen the window.",
        )
    elif skew > 300:
        yield Finding(
            WARN,
            "skew",
            f"{text}: a captured signed URL stays usable for that long; 60 s is the default.",
        )
    else:
        yield Finding(OK, "skew", f"{text} (a captured signed URL is usable that long)")


def _body_limit(settings: Settings) -> Iterator[Finding]:
    limit = settings.max_body_bytes
    text = f"OA_RECALL_MAX_BODY_BYTES = {limit}"
    if limit < 16 * 1024:
        yield Finding(
            WARN,
            "body-limit",
            f"{text}: callbacks that carry whole messages (OfficialAccount.CallbackAfterSendMsg,"
            " ...) may be refused with 413.",
        )
    else:
        yield Finding(OK, "body-limit", text)


def _store(app: Flask, settings: Settings) -> Iterator[Finding]:
    url = (
        redact_url(settings.store_url)
        if settings.store_url
        else "sqlite (oa_recall.sqlite3 in the instance folder)"
    )
    try:
        store = get_state(app).store(settings)
    except Exception as err:
        yield _store_failed(url, err)
        return
    try:
        store.ping()
    except Exception as err:
        yield _store_failed(url, err)
        # A store that refuses its layout can still say which one it holds.
        if isinstance(err, LayoutError):
            yield from _layout(store)
        return
    shown = redact_url(store.url)
    if shown.startswith("memory:"):
        yield Finding(
            WARN,
            "store",
            f"{shown}: in this process only; deliveries are lost on restart and each gunicorn"
            " worker has its own. Use it for tests only.",
        )
    else:
        yield Finding(OK, "store", f"{shown} (read and written)")
    yield from _layout(store)
    if isinstance(store, GuardedStore):
        yield from _memory(store)


def _store_failed(url: str, err: Exception) -> Finding:
    return Finding(
        FAIL,
        "store",
        f"{url}: cannot be read and written ({type(err).__name__}: {err}); accepted"
        " callbacks would not be kept.",
    )


def _layout(store: Store) -> Iterator[Finding]:
    """The layout version the store holds, against the one this package reads and writes."""
    # The instance attribute: a wrapper around the store (guarded.GuardedStore) carries it too.
    supported = store.layout_version
    try:
        stored = store.stored_layout_version()
    except Exception as err:
        yield Finding(FAIL, "layout", f"cannot be read ({type(err).__name__}: {err})")
        return
    if stored is None:
        yield Finding(OK, "layout", f"nothing kept yet; this version writes layout {supported}")
    elif stored > supported:
        yield Finding(
            FAIL,
            "layout",
            f"version {stored}, newer than layout {supported} that this flask-oa-recall reads:"
            " a newer version wrote it. Upgrade flask-oa-recall on this host.",
        )
    else:
        yield Finding(
            OK, "layout", f"version {stored} (this flask-oa-recall reads and writes {supported})"
        )


def _memory(store: GuardedStore) -> Iterator[Finding]:
    """Does the store keep what it holds across a restart, has it forgotten, is it journalled?"""
    journal = store.journal
    if store.watch is not None:
        persistence = store.watch.store.persistence()
        if persistence.keeps:
            yield Finding(OK, "durability", f"kept across restarts: {persistence.text}")
        elif journal is not None:
            yield Finding(
                OK,
                "durability",
                f"{persistence.text}; failed and interrupted deliveries are journalled on this"
                " host too (OA_RECALL_JOURNAL), but a restart still forgets which messages were"
                " handled, so redeliveries after it run again",
            )
        else:
            yield Finding(
                WARN,
                "durability",
                f"{persistence.text}. Failed deliveries kept for replay would be LOST with a"
                " restart: turn on persistence (Redis: appendonly yes) or set"
                " OA_RECALL_JOURNAL = True.",
            )
        report = store.watch.check() or store.watch.last_report
        if report is not None:
            yield Finding(FAIL, "memory", f"{report.describe()}.")
        elif store.watch.known is not None:
            since = _utc(store.watch.known.created_at)
            yield Finding(OK, "memory", f"the store remembers everything since {since}")
    if journal is not None:
        try:
            count = len(journal.entries())
        except StoreError as err:
            yield Finding(FAIL, "journal", str(err))
            return
        yield Finding(
            OK,
            "journal",
            f"{journal.path}: {_plural(count, 'unfinished delivery')} kept on this host",
        )


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _receivers(app: Flask) -> Iterator[Finding]:
    names = [name for name, _ in named_receivers(messages_recalled, app, "")]
    if names:
        yield Finding(OK, "receivers", f"messages_recalled: {', '.join(names)}")
    else:
        yield Finding(
            WARN,
            "receivers",
            "nothing is connected to messages_recalled for this app: recalls are acknowledged"
            " and kept, but nothing takes the messages down. Connect a receiver where the app"
            " is created (@messages_recalled.connect_via(app)).",
        )
    for kind in KINDS.values():
        if kind.command == RECALL_COMMAND:
            continue
        typed = [name for name, _ in named_receivers(kind.signal, app, "")]
        if typed:
            yield Finding(OK, "receivers", f"{kind.signal_name}: {', '.join(typed)}")
    others = [name for name, _ in named_receivers(callback_received, app, "")]
    if others:
        yield Finding(OK, "receivers", f"callback_received: {', '.join(others)}")


def _keep_policy(app: Flask, settings: Settings) -> Iterator[Finding]:
    """What the store gets, by command, with the receivers connected now."""
    keep, skip = settings.keep_commands, settings.skip_commands
    yield Finding(OK, "keep", f"{RECALL_COMMAND}: always kept")
    if skip:
        yield Finding(
            OK,
            "keep",
            f"never kept (OA_RECALL_SKIP_COMMANDS): {', '.join(sorted(skip))}; their receivers"
            " run without dedup, and a failure cannot be replayed",
        )
    if KEEP_ALL in keep:
        yield Finding(OK, "keep", "every other command: kept (OA_RECALL_KEEP_COMMANDS = ['*'])")
        return
    if keep:
        yield Finding(
            OK, "keep", f"always kept (OA_RECALL_KEEP_COMMANDS): {', '.join(sorted(keep))}"
        )
    if named_receivers(callback_received, app, ""):
        yield Finding(
            OK,
            "keep",
            "every other command: kept, because callback_received has receivers",
        )
        return
    listened = sorted(
        kind.command
        for kind in KINDS.values()
        if kind.command != RECALL_COMMAND
        and kind.command not in skip
        and kind.command not in keep
        and named_receivers(kind.signal, app, "")
    )
    if listened:
        yield Finding(OK, "keep", f"kept while their receivers listen: {', '.join(listened)}")
    yield Finding(
        OK,
        "keep",
        "any other command: answered, not kept (nothing listens to it; no store write)",
    )


def _route(app: Flask) -> Iterator[Finding]:
    rules = callback_rules(app)
    if not rules:
        yield Finding(FAIL, "route", "no URL serves the callback view.")
        return
    server = app.config.get("SERVER_NAME")
    for rule in rules:
        where = f"https://{server}{rule.rule}" if server else rule.rule
        yield Finding(
            OK,
            "route",
            f"POST {where} (enter the public https:// URL of this path in the Chat console)",
        )


def _dispatch(settings: Settings) -> Iterator[Finding]:
    if settings.dispatch == "after_response":
        text = "after_response: the answer goes out first, receivers run after it"
    else:
        text = (
            f"sync: receivers run before the answer; keep them well inside Tencent's"
            f" {TENCENT_TIMEOUT_SECONDS:g} s"
        )
    yield Finding(OK, "dispatch", text)


def run_checks(app: Flask) -> list[Finding]:
    """Check ``app``'s configuration; one :class:`Finding` per line of the report."""
    try:
        settings = get_state(app).settings(app.config)
    except Exception as err:
        return [Finding(FAIL, "config", f"{type(err).__name__}: {err}")]
    findings: list[Finding] = []
    findings += _sdk_app_ids(settings)
    findings += _tokens(settings)
    findings += _skew(settings)
    findings += _body_limit(settings)
    findings += _store(app, settings)
    findings += _receivers(app)
    findings += _keep_policy(app, settings)
    findings += _route(app)
    findings += _dispatch(settings)
    return findings


def _plural(count: int, noun: str) -> str:
    if count != 1 and noun.endswith("y"):
        return f"{count} {noun[:-1]}ies"
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _load_app() -> tuple[Flask | None, list[Finding]]:
    """The app, or the configuration error that kept it from starting, as a finding."""
    info = click.get_current_context().ensure_object(ScriptInfo)
    try:
        return info.load_app(), []
    except click.ClickException:
        raise  # the app could not be found or imported: Flask says why
    except Exception as err:
        return None, [
            Finding(FAIL, "config", f"the app did not start: {type(err).__name__}: {err}")
        ]


@click.command("check")
@click.option("--strict", is_flag=True, help="Exit non-zero on warnings too.")
def check_command(strict: bool) -> None:
    """Check the configuration before going live: one line per check, OK, WARN or FAIL.

    A configuration error that keeps the app from starting is a FAIL line too. The exit status
    is 1 if a check failed (or, with --strict, warned).
    """
    app, findings = _load_app()
    if app is not None:
        with app.app_context():
            findings = run_checks(app)
    width = max(len(f.topic) for f in findings)
    for f in findings:
        level = click.style(f"{f.level:<4}", fg=_COLOURS[f.level], bold=f.level != OK)
        click.echo(f"{level}  {f.topic:<{width}}  {f.text}")
    counts = {level: sum(f.level == level for f in findings) for level in (OK, WARN, FAIL)}
    click.echo(
        f"{counts[OK]} ok, {_plural(counts[WARN], 'warning')}, {_plural(counts[FAIL], 'failure')}"
    )
    if counts[FAIL] or (strict and counts[WARN]):
        raise SystemExit(1)
