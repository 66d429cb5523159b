"""A host app with a moderation decider, for the end-to-end tests of the decision budget.

``create_app()`` reads ``OA_RECALL_*`` from the environment as ``tests.apps.host`` does and
registers a decider for ``OfficialAccount.CallbackBeforeSendMsg`` that acts on the text of the
message's first element:

- ``raise``: raises ``RuntimeError``;
- ``sleep <seconds>``: sleeps, writes ``late``, then denies;
- ``hang``: never returns (waits on an event nobody sets);
- ``rewrite``: allowed with a new ``MsgBody`` and ``CloudCustomData``;
- ``drop``: dropped;
- anything holding ``forbidden``: denied; anything else: allowed (``None``).

A second decider, for ``OfficialAccount.CallbackBeforeAddSubscriber``, refuses every subscriber
whose id starts with ``bot``.

Each call writes ``decided decider <pid> <text>`` to ``OA_TEST_RECORD`` first, and each
``decision_failed`` writes ``failed <exception class> <pid> <delivery id>``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from flask import Flask

from flask_oa_recall import Callback, Decision, OARecall, decision_failed
from tests.apps.host import SDK_APP_ID, TOKEN, _env_value, record

SEND = "OfficialAccount.CallbackBeforeSendMsg"

oa = OARecall()


@oa.decider(SEND)
def moderate(callback: Callback) -> Decision | None:
    """The decider the tests drive through the message text."""
    text = callback.body["MsgBody"][0]["MsgContent"]["Text"]
    record("decided", "decider", text)
    if text == "raise":
        raise RuntimeError("moderation service down")
    if text.startswith("sleep "):
        time.sleep(float(text.split()[1]))
        record("late", "decider", text)
        return Decision.deny("decided late")
    if text == "hang":
        threading.Event().wait()
    if text == "rewrite":
        return Decision.allow(
            msg_body=[{"MsgType": "TIMTextElem", "MsgContent": {"Text": "rewritten"}}],
            cloud_custom_data='{"moderated":true}',
        )
    if text == "drop":
        return Decision.drop()
    if "forbidden" in text:
        return Decision.deny("Blocked by moderation.")
    return None


@oa.decider("OfficialAccount.CallbackBeforeAddSubscriber")
async def no_bots(callback: Callback) -> Decision:
    """Refuse the subscribers whose id starts with ``bot`` (an ``async def`` decider)."""
    accounts = [s["Subscriber_Account"] for s in callback.body["SubscribeAccountList"]]
    return Decision.allow(refused_subscribers=[a for a in accounts if a.startswith("bot")])


def on_failed(app: Flask, exception: Exception, delivery_id: str, **_: Any) -> None:
    """Record each ``decision_failed``."""
    record("failed", type(exception).__name__, delivery_id)


def create_app() -> Flask:
    """Build the app from the environment."""
    app = Flask(__name__, instance_path=os.environ.get("OA_TEST_INSTANCE"))
    app.config.update(
        OA_RECALL_SDKAPPID=SDK_APP_ID, OA_RECALL_TOKENS=[TOKEN], OA_RECALL_STORE="memory://"
    )
    app.config.update(
        {k: _env_value(v) for k, v in os.environ.items() if k.startswith("OA_RECALL_")}
    )
    oa.init_app(app)
    decision_failed.connect(on_failed, app, weak=False)
    return app
