"""``tests.apps.host`` plus two receivers for fault tests.

- ``picky`` (``messages_recalled``) raises for every MsgKey that starts with ``boom-`` while
  the file named by ``OA_TEST_HEAL`` does not exist, and records ``fail``; otherwise it records
  ``done``.
- ``sleepy`` (``callback_received``, so it runs before ``mirror``), connected when
  ``OA_TEST_SLEEP`` is set: sleeps that many seconds, so that workers are busy under load and a
  killed worker dies with requests in flight.

The other receivers (``audit``, ``mirror``, and ``flaky`` if enabled) are the host app's.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask

from flask_oa_recall import Callback, RecallEvent, callback_received, messages_recalled
from tests.apps import host


def picky(app: Flask, event: RecallEvent, **_: Any) -> None:
    """Fail for ``boom-`` keys until the heal file exists."""
    bad = [k for k in event.msg_keys if k.startswith("boom-")]
    if bad and not os.path.exists(os.environ["OA_TEST_HEAL"]):
        for key in bad:
            host.record("fail", "picky", key)
        raise RuntimeError(f"picky refuses {len(bad)} boom- key(s) until healed")
    for key in event.msg_keys:
        host.record("done", "picky", key)


def sleepy(app: Flask, callback: Callback, **_: Any) -> None:
    """Take ``OA_TEST_SLEEP`` seconds."""
    time.sleep(float(os.environ["OA_TEST_SLEEP"]))


def create_app() -> Flask:
    """The host app with ``picky`` (and ``sleepy``) connected after its own receivers."""
    app = host.create_app()
    messages_recalled.connect(picky, app, weak=False)
    if os.environ.get("OA_TEST_SLEEP"):
        callback_received.connect(sleepy, app, weak=False)
    return app
