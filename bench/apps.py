"""The WSGI apps under test: the floor (a bare Flask route) and the extension.

gunicorn loads them with ``bench.apps:create_app()``; the set-up comes from environment
variables so that every server is started the same way:

- ``BENCH_APP``: ``floor`` or ``extension``;
- ``BENCH_STORE``: ``OA_RECALL_STORE`` (empty: the default SQLite file in ``BENCH_INSTANCE``);
- ``BENCH_SIGNED``: ``1`` to configure a token (the load generator then signs), ``0`` for none;
- ``BENCH_RECEIVERS``: how many no-op receivers to connect to ``messages_recalled``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from flask import Flask, Response, request

from flask_oa_recall import OARecall, messages_recalled

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
    def receiver(sender: Flask, event: Any, **extra: Any) -> None:
        """A host receiver that does nothing, so that only the extension is measured."""

    receiver.__qualname__ = f"noop_receiver_{index}"
    return receiver


def create_extension(
    *,
    store: str | None,
    signed: bool,
    receivers: int = 1,
    instance_path: str | None = None,
) -> Flask:
    """The extension on its own route, with ``receivers`` no-op recall receivers."""
    app = Flask("bench_extension", instance_path=instance_path)
    app.config["OA_RECALL_SDKAPPID"] = SDK_APP_ID
    app.config["OA_RECALL_TOKENS"] = [TOKEN] if signed else []
    app.config["OA_RECALL_STORE"] = store or None
    app.config["OA_RECALL_PATH"] = PATH
    # Unsigned set-ups log one warning at start-up; keep the benchmark's output quiet.
    logging.getLogger("flask_oa_recall").setLevel(logging.ERROR)
    OARecall(app)
    # Receivers must outlive this function: blinker holds them weakly unless told otherwise.
    app.extensions["bench_receivers"] = kept = [_noop_receiver(i) for i in range(receivers)]
    for receiver in kept:
        messages_recalled.connect(receiver, sender=app, weak=False)
    return app


def create_app() -> Flask:
    """The app that ``BENCH_*`` environment variables describe (gunicorn's entry point)."""
    if os.environ.get("BENCH_APP", "floor") == "floor":
        return create_floor()
    return create_extension(
        store=os.environ.get("BENCH_STORE") or None,
        signed=os.environ.get("BENCH_SIGNED", "1") == "1",
        receivers=int(os.environ.get("BENCH_RECEIVERS", "1")),
        instance_path=os.environ.get("BENCH_INSTANCE") or None,
    )
