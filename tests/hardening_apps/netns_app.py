"""The example app (``examples/mirror_app.py``) as each namespace host runs it, plus a tally.

Served with ``gunicorn -c examples/gunicorn.conf.py tests.hardening_apps.netns_app:create_app()``
(the example's own config; ``BIND`` puts it on the host's address). On top of the example's
receivers it connects, for the test to count with:

- ``audit`` (``callback_received``): one line per accepted callback;
- ``tally`` (``messages_recalled``): one line per recalled MsgKey it was given;
- ``picky`` (``messages_recalled``): raises for MsgKeys starting with ``boom-`` while the file
  ``OA_TEST_HEAL`` does not exist; otherwise records them.

Lines go to ``OA_TEST_RECORD`` in one ``O_APPEND`` write each:
``<what> <receiver> <host> <pid> <delivery id> <key>`` (for ``audit``, the MsgKeys joined by
commas).
``OA_TEST_LEASE_SECONDS`` sets ``OA_RECALL_LEASE_SECONDS`` (the example reads only the store,
SdkAppid and tokens from the environment).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from flask import Flask

from flask_oa_recall import Callback, RecallEvent, callback_received, messages_recalled

EXAMPLES = str(Path(__file__).resolve().parents[2] / "examples")
if EXAMPLES not in sys.path:  # gunicorn's chdir puts it there; ``flask --app`` does not
    sys.path.insert(0, EXAMPLES)

import mirror_app  # noqa: E402


def record(what: str, receiver: str, delivery_id: str, key: str) -> None:
    """Append one line to the record file in a single write."""
    host = os.environ["OA_TEST_HOST"]
    line = f"{what} {receiver} {host} {os.getpid()} {delivery_id} {key}\n".encode()
    fd = os.open(os.environ["OA_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def audit(app: Flask, callback: Callback, **_: Any) -> None:
    """Record every accepted callback with its MsgKeys."""
    keys = [str(entry.get("MsgKey")) for entry in callback.body.get("WithdrawMsgList", [])]
    record("got", "audit", callback.delivery_id, ",".join(keys) or "-")


def tally(app: Flask, event: RecallEvent, **_: Any) -> None:
    """Record each MsgKey this receiver was given."""
    for key in event.msg_keys:
        record("done", "tally", event.delivery_id, key)


def picky(app: Flask, event: RecallEvent, **_: Any) -> None:
    """Fail for ``boom-`` keys until the heal file exists."""
    bad = [k for k in event.msg_keys if k.startswith("boom-")]
    if bad and not os.path.exists(os.environ["OA_TEST_HEAL"]):
        for key in bad:
            record("fail", "picky", event.delivery_id, key)
        raise RuntimeError(f"picky refuses {len(bad)} boom- key(s) until healed")
    for key in event.msg_keys:
        record("done", "picky", event.delivery_id, key)


def create_app() -> Flask:
    """The example app with the three receivers above connected after its own."""
    app = mirror_app.create_app()
    if os.environ.get("OA_TEST_LEASE_SECONDS"):
        app.config["OA_RECALL_LEASE_SECONDS"] = float(os.environ["OA_TEST_LEASE_SECONDS"])
    callback_received.connect(audit, app, weak=False)
    messages_recalled.connect(tally, app, weak=False)
    messages_recalled.connect(picky, app, weak=False)
    return app
