"""A host app for end-to-end tests: receivers that keep their own record in a shared file.

``create_app()`` is configured from the environment, so that gunicorn workers and the
``flask --app tests.apps.host:create_app() oa-recall ...`` command build the same app:

- every ``OA_RECALL_*`` variable becomes that config key; its value is parsed as JSON when it
  can be (``OA_RECALL_LEASE_SECONDS=1`` is the number 1), else kept as a string;
- ``OA_TEST_INSTANCE``: the instance folder (where the default SQLite store lives);
- ``OA_TEST_RECORD``: the record file (required);
- ``OA_TEST_PING_STORE``: when set, the app uses its store once while it is created (with
  gunicorn's ``--preload``, in the master, before the workers are forked);
- ``OA_TEST_FLAKY_DIR``: when set, the receiver ``flaky`` is connected: it raises the first
  time it sees a MsgKey (a marker file per key in that folder) and succeeds after that;
- ``OA_TEST_RECORD_ROUTE``: when set, ``audit`` also writes ``route audit <pid> direct`` (or
  ``flask``): whether the callback came through the direct route or through Flask's dispatch;
- ``OA_TEST_BLOCK_UNTIL``: when set, ``mirror`` writes its ``start`` lines and then waits until
  that file exists (at most ``OA_TEST_BLOCK_SECONDS``, default 10) before it writes ``done``;
  tests use it to kill a worker mid-receiver, or to show that the answer went out first.

The record has one line per event, written with a single ``O_APPEND`` write so that the lines
of several worker processes never interleave: ``<what> <receiver> <pid> <key>``, where
``what`` is ``start``, ``done``, ``fail`` or ``timeout`` and ``key`` is a MsgKey (or a delivery
id for ``audit``, the ``callback_received`` receiver).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from flask import Flask, has_request_context

from flask_oa_recall import Callback, OARecall, RecallEvent, callback_received, messages_recalled
from flask_oa_recall.state import get_state

SDK_APP_ID = 1400000000
TOKEN = "e2e-token"


def record(what: str, receiver: str, key: str) -> None:
    """Append one line to the record file in a single write."""
    line = f"{what} {receiver} {os.getpid()} {key}\n".encode()
    fd = os.open(os.environ["OA_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def audit(app: Flask, callback: Callback, **_: Any) -> None:
    """Record every accepted callback, by delivery id (and its route, if asked)."""
    record("done", "audit", callback.delivery_id)
    if os.environ.get("OA_TEST_RECORD_ROUTE"):
        record("route", "audit", "flask" if has_request_context() else "direct")


def mirror(app: Flask, event: RecallEvent, **_: Any) -> None:
    """Record each recalled MsgKey; optionally wait for a go-ahead file in between."""
    for key in event.msg_keys:
        record("start", "mirror", key)
    block_until = os.environ.get("OA_TEST_BLOCK_UNTIL")
    if block_until:
        deadline = time.monotonic() + float(os.environ.get("OA_TEST_BLOCK_SECONDS", "10"))
        while not os.path.exists(block_until):
            if time.monotonic() > deadline:
                for key in event.msg_keys:
                    record("timeout", "mirror", key)
                return
            time.sleep(0.02)
    for key in event.msg_keys:
        record("done", "mirror", key)


def flaky(app: Flask, event: RecallEvent, **_: Any) -> None:
    """Fail the first time a MsgKey is seen, succeed afterwards."""
    folder = os.environ["OA_TEST_FLAKY_DIR"]
    first = []
    for key in event.msg_keys:
        try:
            os.close(os.open(os.path.join(folder, key.encode().hex()), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        first.append(key)
    if first:
        for key in first:
            record("fail", "flaky", key)
        raise RuntimeError(f"flaky receiver fails the first time, for {len(first)} key(s)")
    for key in event.msg_keys:
        record("done", "flaky", key)


def _env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def create_app() -> Flask:
    """Build the host app from the environment (see the module's docstring)."""
    app = Flask(__name__, instance_path=os.environ.get("OA_TEST_INSTANCE"))
    app.config.update(OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_TOKENS=[TOKEN])
    app.config.update(
        {k: _env_value(v) for k, v in os.environ.items() if k.startswith("OA_RECALL_")}
    )
    OARecall(app)
    if os.environ.get("OA_TEST_PING_STORE"):
        state = get_state(app)
        state.store(state.settings(app.config)).ping()
    callback_received.connect(audit, app, weak=False)
    messages_recalled.connect(mirror, app, weak=False)
    if os.environ.get("OA_TEST_FLAKY_DIR"):
        messages_recalled.connect(flaky, app, weak=False)
    return app
