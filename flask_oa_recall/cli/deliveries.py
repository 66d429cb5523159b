"""``deliveries``, ``replay`` and ``prune``: look after kept deliveries."""

from __future__ import annotations

import click

from . import oa_recall_cli


@oa_recall_cli.command("deliveries")
def deliveries_command() -> None:
    """List kept deliveries."""
    click.echo("not yet")
