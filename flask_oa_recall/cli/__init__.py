"""The ``flask oa-recall`` command group; one module per command family."""

from __future__ import annotations

from flask.cli import AppGroup

__all__ = ["oa_recall_cli"]

oa_recall_cli = AppGroup(
    "oa-recall", help="Tencent Cloud Chat callbacks: deliveries, replay, checks."
)

# The command modules add themselves to the group on import.
from . import check, deliveries, openapi, send  # noqa: E402, F401
