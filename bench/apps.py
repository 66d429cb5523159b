"""The WSGI apps under test: the floor, the hand-written route and the extension.

gunicorn loads them with ``bench.apps:create_app()``; the set-up comes from environment
variables so that every server is started the same way:

- ``BENCH_APP``: a name in :data:`FACTORIES` (``floor``, ``handwritten``, ``extension``...);
- ``BENCH_STORE``: ``OA_RECALL_STORE`` (empty: the default SQLite file in ``BENCH_INSTANCE``);
- ``BENCH_SIGNED``: ``1`` to configure a token (the load generator then signs), ``0`` for none;
- ``BENCH_RECEIVERS``: how many no-op receivers to connect to ``messages_recalled``.

A new kind of server is one more entry in :data:`FACTORIES` (a function of :class:`AppOptions`).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blinker
from flask import Flask, Response, request
from marshmallow import ValidationError

from flask_oa_recall import Callback, Decision, OARecall, messages_recalled
from flask_oa_recall.schemas import recall_body_schema
from flask_oa_recall.security import sign

SDK_APP_ID = 1400000000
TOKEN = "bench-token"
PATH = "/tencent-im/callback"
OK_BODY = b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'


def create_floor() -> Flask:
    """What Flask itself costs: read the body, parse the JSON, answer the same envelope."""
    app = Flask("bench_floor")

    @app.post(PATH)
    def callback() -> Response:
        body = json.loads(request.get_data())
        if not isinstance(body, dict):
            return Response(b'{"ActionStatus":"FAIL"}', status=400, mimetype="application/json")
        return Response(OK_BODY, status=200, mimetype="application/json")

    return app


def _noop_receiver(index: int) -> Any:
    def receiver(sender: Flask, **extra: Any) -> None:
        """A host receiver that does nothing, so that only the extension is measured."""

    receiver.__qualname__ = f"noop_receiver_{index}"
    return receiver


def create_extension(
    *,
    store: str | None,
    signed: bool,
    receivers: int = 1,
    instance_path: str | None = None,
    extension: OARecall | None = None,
) -> Flask:
    """The extension (``extension``, or a new one) on its own route, with ``receivers`` no-op
    recall receivers."""
    app = Flask("bench_extension", instance_path=instance_path)
    app.config["OA_RECALL_SDKAPPID"] = SDK_APP_ID
    app.config["OA_RECALL_TOKENS"] = [TOKEN] if signed else []
    app.config["OA_RECALL_STORE"] = store or None
    app.config["OA_RECALL_PATH"] = PATH
    (extension or OARecall()).init_app(app)
    # Receivers must outlive this function: blinker holds them weakly unless told otherwise.
    app.extensions["bench_receivers"] = kept = [_noop_receiver(i) for i in range(receivers)]
    for receiver in kept:
        messages_recalled.connect(receiver, sender=app, weak=False)
    return app


#: The before-command the ``decider`` server answers.
BEFORE_SEND_COMMAND = "OfficialAccount.CallbackBeforeSendMsg"


def _moderate(callback: Callback) -> Decision | None:
    """A moderation decider as a host would write one: a word check on the message."""
    if "forbidden" in json.dumps(callback.body.get("MsgBody"), ensure_ascii=False):
        return Decision.deny("Blocked by moderation.")
    return None


def create_with_decider(
    *, store: str | None, signed: bool, instance_path: str | None = None
) -> Flask:
    """The extension answering ``OfficialAccount.CallbackBeforeSendMsg`` with :func:`_moderate`
    (which allows the bench's messages); no receiver connected."""
    extension = OARecall()
    extension.decider(BEFORE_SEND_COMMAND)(_moderate)
    return create_extension(
        store=store, signed=signed, receivers=0, instance_path=instance_path, extension=extension
    )


def _fail(status: int, text: str) -> Response:
    body = json.dumps({"ActionStatus": "FAIL", "ErrorCode": status, "ErrorInfo": text})
    return Response(body, status=status, mimetype="application/json")


def create_handwritten(*, store: str | None, instance_path: str | None = None) -> Flask:
    """The route a user would write by hand: at most once, nothing kept for replay.

    Sign check, the extension's own marshmallow schema, one ``INSERT OR IGNORE`` per MsgKey
    in one SQLite (WAL) transaction (or a set under a lock for ``memory://``, or one pipelined
    ``SET NX`` per MsgKey for ``redis://``), then a blinker signal for the new MsgKeys.
    """
    app = Flask("bench_handwritten", instance_path=instance_path)
    app.extensions["bench_recalled"] = recalled = blinker.Signal()
    app.extensions["bench_receivers"] = kept = [_noop_receiver(0)]
    recalled.connect(kept[0], weak=False)
    first_time = _handwritten_dedup(store, app.instance_path)

    @app.post(PATH)
    def callback() -> Response:
        args = request.args
        if args.get("SdkAppid") != str(SDK_APP_ID):
            return _fail(403, "unknown SdkAppid")
        when, given = args.get("RequestTime", ""), args.get("Sign", "")
        if not when.isdigit() or abs(time.time() - int(when)) > 60:
            return _fail(401, "stale or missing RequestTime")
        if not hmac.compare_digest(sign(TOKEN, when), given):
            return _fail(401, "bad Sign")
        try:
            data = recall_body_schema.load(json.loads(request.get_data()))
        except (ValueError, ValidationError):
            return _fail(400, "bad body")
        oa = data["Official_Account"]
        new = first_time(oa, [m.msg_key for m in data["WithdrawMsgList"]])
        if new:
            recalled.send(app, official_account=oa, msg_keys=new)
        return Response(OK_BODY, status=200, mimetype="application/json")

    return app


def _handwritten_dedup(
    store: str | None, instance_path: str
) -> Callable[[str, list[str]], list[str]]:
    """``first_time(official_account, msg_keys)``: the MsgKeys never seen before."""
    if store and store.startswith("memory:"):
        seen: set[tuple[str, str]] = set()
        lock = threading.Lock()

        def first_time_memory(oa: str, keys: list[str]) -> list[str]:
            with lock:
                new = [k for k in keys if (oa, k) not in seen]
                seen.update((oa, k) for k in new)
            return new

        return first_time_memory
    if store and store.startswith("redis"):
        import redis

        url, _, prefix = store.partition("?prefix=")
        client = redis.Redis.from_url(url)

        def first_time_redis(oa: str, keys: list[str]) -> list[str]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(f"{{{prefix}}}:hand:{oa}:{key}", 1, nx=True)
            return [k for k, added in zip(keys, pipe.execute(), strict=True) if added]

        return first_time_redis
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, "handwritten.sqlite3")
    local = threading.local()

    def connection() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = sqlite3.connect(path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS recalled (official_account TEXT, msg_key TEXT,"
                " PRIMARY KEY (official_account, msg_key)) WITHOUT ROWID"
            )
            local.conn, local.pid = conn, os.getpid()
        return conn

    def first_time_sqlite(oa: str, keys: list[str]) -> list[str]:
        conn = connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            new = [
                k
                for k in keys
                if conn.execute("INSERT OR IGNORE INTO recalled VALUES (?, ?)", (oa, k)).rowcount
            ]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return new

    return first_time_sqlite


@dataclass(frozen=True)
class AppOptions:
    """What ``BENCH_*`` says about the server to build."""

    store: str | None = None
    signed: bool = True
    receivers: int = 1
    instance_path: str | None = None

    @classmethod
    def from_environ(cls) -> AppOptions:
        """The options in this process's environment."""
        return cls(
            store=os.environ.get("BENCH_STORE") or None,
            signed=os.environ.get("BENCH_SIGNED", "1") == "1",
            receivers=int(os.environ.get("BENCH_RECEIVERS", "1")),
            instance_path=os.environ.get("BENCH_INSTANCE") or None,
        )


#: Every kind of server, by the name ``Setup.app`` and ``BENCH_APP`` give. Add one here.
FACTORIES: dict[str, Callable[[AppOptions], Flask]] = {
    "floor": lambda o: create_floor(),
    "handwritten": lambda o: create_handwritten(store=o.store, instance_path=o.instance_path),
    "extension": lambda o: create_extension(
        store=o.store, signed=o.signed, receivers=o.receivers, instance_path=o.instance_path
    ),
    "decider": lambda o: create_with_decider(
        store=o.store, signed=o.signed, instance_path=o.instance_path
    ),
}


def quiet() -> None:
    """Unsigned set-ups log a warning at start-up: keep a benchmark process's output quiet.

    Only in the benchmark's own processes, never on import: it would silence the package's
    warnings in a test run that imports these apps.
    """
    logging.getLogger("flask_oa_recall").setLevel(logging.ERROR)


def create_app() -> Flask:
    """The app that ``BENCH_*`` environment variables describe (gunicorn's entry point)."""
    quiet()
    return FACTORIES[os.environ.get("BENCH_APP", "floor")](AppOptions.from_environ())
