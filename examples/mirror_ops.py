"""Operating the example: ``/metrics`` for Prometheus and the operator page for deliveries.

- ``/metrics``: when the ``metrics`` extra is installed (``pip install -e '.[metrics]'``);
  the example's gunicorn config sets ``PROMETHEUS_MULTIPROC_DIR`` so that every worker counts.
- ``/oa-recall-admin/``: the operator page, behind HTTP Basic authentication with the user
  ``operator`` and the password in ``OA_RECALL_ADMIN_PASSWORD``. Without that variable the page
  refuses every request.

A real app would put both behind its own login and network rules; ``/metrics`` is usually
reachable only from the Prometheus server.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import os
from collections.abc import Callable

from flask import Flask, Response
from werkzeug.wrappers import Request

from flask_oa_recall.admin import create_admin_blueprint

ADMIN_USER = "operator"


def metrics_installed() -> bool:
    """Whether prometheus_client (the ``metrics`` extra) is installed."""
    return importlib.util.find_spec("prometheus_client") is not None


def basic_auth(password: str | None) -> Callable[[Request], bool | Response]:
    """An ``authorize`` check for HTTP Basic authentication as ``operator``/``password``."""

    def authorize(request: Request) -> bool | Response:
        auth = request.authorization
        if (
            password
            and auth is not None
            and auth.type == "basic"
            and hmac.compare_digest(auth.username or "", ADMIN_USER)
            and hmac.compare_digest(auth.password or "", password)
        ):
            return True
        return Response(
            "Sign in as the operator to see deliveries.\n",
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="oa-recall deliveries"'},
            mimetype="text/plain",
        )

    return authorize


def add_operations(app: Flask) -> None:
    """Mount ``/metrics`` (if the extra is installed) and the operator page on ``app``.

    Call it before ``OARecall(app)``, which reads ``OA_RECALL_METRICS``.
    """
    password = os.environ.get("OA_RECALL_ADMIN_PASSWORD") or None
    if not app.secret_key:
        # Every worker needs the same key for the replay form's CSRF token; set SECRET_KEY in
        # production. Derived from the password here so the example runs with one variable.
        seed = (password or "no-password").encode()
        app.secret_key = os.environ.get("SECRET_KEY") or hashlib.sha256(seed).hexdigest()
    app.register_blueprint(
        create_admin_blueprint(authorize=basic_auth(password)),
        url_prefix="/oa-recall-admin",
    )
    if metrics_installed():
        from flask_oa_recall.metrics import metrics_response

        app.config.setdefault("OA_RECALL_METRICS", True)
        app.add_url_rule("/metrics", "metrics", metrics_response)
