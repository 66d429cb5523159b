"""A host app: a SQLite mirror of Official Account messages that honours recalls and moderates.

- ``OfficialAccount.CallbackAfterSendMsg`` (signal ``message_sent``): the message is inserted.
- ``OfficialAccount.CallbackAfterMsgWithDraw`` (signal ``messages_recalled``): it is marked
  recalled.
- ``OfficialAccount.CallbackBeforeSendMsg`` (a decider): a message whose text contains the
  blocked word is denied before Tencent delivers it; the client gets ``ErrorCode`` 120001 and
  the reason.

``GET /messages`` lists the mirror.

Configuration comes from the environment:

- ``OA_RECALL_SDKAPPID``: your SDKAppID (default 1400000000, for trying it out);
- ``OA_RECALL_TOKENS``: comma-separated callback tokens (default ``change-me``; empty turns
  authentication off, which logs a warning);
- ``OA_RECALL_STORE``: where deliveries are kept (default: SQLite in the instance folder);
- ``MIRROR_DATABASE``: the mirror's SQLite file (default: ``mirror.sqlite3`` in the
  instance folder);
- ``MIRROR_BLOCKED_WORD``: the word the moderation decider denies (default ``forbidden``; empty
  turns moderation off).
- ``OA_RECALL_ADMIN_PASSWORD``: the password of the operator page at ``/oa-recall-admin/``
  (user ``operator``; without it the page refuses every request). ``/metrics`` is served when
  the ``metrics`` extra is installed. See ``mirror_ops.py``.

Run it with ``gunicorn -c examples/gunicorn.conf.py`` from the project's root.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from flask import Flask, current_app, jsonify
from mirror_ops import add_operations

from flask_oa_recall import (
    Callback,
    Decision,
    MessageSentEvent,
    OARecall,
    RecallEvent,
    message_sent,
    messages_recalled,
)

SEED = [
    ("@TOA#_news", "71_1_1698741698", "Welcome to the news channel."),
    ("@TOA#_news", "72_1_1698741760", "Draft: results are in (sent too early)."),
    ("@TOA#_news", "73_1_1698741822", "Tomorrow's weather: sunny."),
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    official_account TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    text TEXT NOT NULL,
    sent_at TEXT,
    recalled_at TEXT,
    PRIMARY KEY (official_account, msg_key)
);
"""

#: The ``ErrorCode`` a denied message gets: in [120001, 130000], so Tencent passes it and the
#: reason on to the sender's client.
BLOCKED_CODE = 120001

oa_recall = OARecall()


@oa_recall.decider("OfficialAccount.CallbackBeforeSendMsg")
def moderate(callback: Callback) -> Decision | None:
    """Deny a message whose text contains ``MIRROR_BLOCKED_WORD``; allow the others unchanged."""
    word = current_app.config["MIRROR_BLOCKED_WORD"]
    if word and word.lower() in _text(callback.body.get("MsgBody")).lower():
        return Decision.deny(f"Blocked by moderation: {word!r}.", error_code=BLOCKED_CODE)
    return None


def _text(msg_body: Any) -> str:
    """The text of the ``TIMTextElem`` elements of a ``MsgBody``."""
    if not isinstance(msg_body, list):
        return ""
    return "\n".join(
        str(element.get("MsgContent", {}).get("Text", ""))
        for element in msg_body
        if isinstance(element, dict) and element.get("MsgType") == "TIMTextElem"
    )


def _database(app: Flask) -> sqlite3.Connection:
    conn = sqlite3.connect(app.config["MIRROR_DATABASE"], timeout=10, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _init_database(app: Flask) -> None:
    os.makedirs(os.path.dirname(app.config["MIRROR_DATABASE"]), exist_ok=True)
    conn = _database(app)
    try:
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT OR IGNORE INTO messages (official_account, msg_key, text) VALUES (?, ?, ?)",
            SEED,
        )
    finally:
        conn.close()


def on_sent(app: Flask, event: MessageSentEvent, **_: Any) -> None:
    """Insert a delivered message into the mirror; running twice changes nothing."""
    sent_at = event.sent_at or event.event_time
    conn = _database(app)
    try:
        conn.execute(
            "INSERT OR IGNORE INTO messages (official_account, msg_key, text, sent_at)"
            " VALUES (?, ?, ?, ?)",
            (event.official_account, event.msg_key, event.text, sent_at.isoformat()),
        )
    finally:
        conn.close()
    app.logger.info("mirrored message %s of %s", event.msg_key, event.official_account)


def on_recall(app: Flask, event: RecallEvent, **_: Any) -> None:
    """Hide every recalled message in the mirror; running twice changes nothing."""
    conn = _database(app)
    try:
        conn.executemany(
            "UPDATE messages SET recalled_at = ? WHERE official_account = ? AND msg_key = ?"
            " AND recalled_at IS NULL",
            [(event.event_time.isoformat(), event.official_account, k) for k in event.msg_keys],
        )
    finally:
        conn.close()
    app.logger.info("recalled %d message(s) of %s", len(event.msg_keys), event.official_account)


def create_app() -> Flask:
    """Build the example app from environment variables."""
    app = Flask(__name__)
    tokens = os.environ.get("OA_RECALL_TOKENS", "change-me")
    app.config.update(
        OA_RECALL_SDKAPPID=int(os.environ.get("OA_RECALL_SDKAPPID", "1400000000")),
        OA_RECALL_TOKENS=[t.strip() for t in tokens.split(",") if t.strip()],
        OA_RECALL_STORE=os.environ.get("OA_RECALL_STORE") or None,
        MIRROR_DATABASE=os.environ.get(
            "MIRROR_DATABASE", os.path.join(app.instance_path, "mirror.sqlite3")
        ),
        MIRROR_BLOCKED_WORD=os.environ.get("MIRROR_BLOCKED_WORD", "forbidden").strip(),
    )
    add_operations(app)
    oa_recall.init_app(app)
    _init_database(app)
    message_sent.connect(on_sent, app, weak=False)
    messages_recalled.connect(on_recall, app, weak=False)

    @app.get("/messages")
    def list_messages() -> Any:
        """The mirror, read-only: recalled messages carry ``recalled_at``."""
        conn = _database(app)
        try:
            rows = conn.execute(
                "SELECT official_account, msg_key, text, sent_at, recalled_at FROM messages"
                " ORDER BY official_account, msg_key"
            ).fetchall()
        finally:
            conn.close()
        keys = ("official_account", "msg_key", "text", "sent_at", "recalled_at")
        return jsonify([dict(zip(keys, row, strict=True)) for row in rows])

    return app
