"""The ``flask oa-recall`` command group."""

from __future__ import annotations

import click
from flask.cli import AppGroup

__all__ = ["oa_recall_cli"]

oa_recall_cli = AppGroup(
    "oa-recall", help="Tencent Cloud Chat callbacks: deliveries, replay, checks."
)


@oa_recall_cli.command("deliveries")
def deliveries_command() -> None:
    """List kept deliveries."""
    click.echo("not yet")
