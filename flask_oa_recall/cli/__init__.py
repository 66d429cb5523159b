"""The ``flask oa-recall`` commands; one module per command family.

The blueprint adds them to its own ``cli`` group, named ``oa-recall``, and Flask adds that group
to ``app.cli`` when the blueprint is registered, as it does for any blueprint's commands.
"""

from __future__ import annotations

import click

from .check import check_command
from .deliveries import deliveries_command, prune_command, replay_command
from .openapi import openapi_command
from .send import send_command

__all__ = ["CLI_GROUP", "COMMANDS", "add_commands", "plugin_group"]

#: The name of the group under ``flask``: ``flask oa-recall ...``.
CLI_GROUP = "oa-recall"

#: Every command of the group.
COMMANDS = (
    check_command,
    deliveries_command,
    openapi_command,
    prune_command,
    replay_command,
    send_command,
)


def add_commands(group: click.Group) -> None:
    """Add the commands to ``group`` (a blueprint's ``cli``) and give it its help text."""
    group.help = "Tencent Cloud Chat callbacks: deliveries, replay, checks."
    for command in COMMANDS:
        group.add_command(command)


#: The same commands, for Flask's ``flask.commands`` entry point (see pyproject.toml): Flask
#: finds it without loading the app, so ``check`` can report an app that fails to start.
plugin_group = click.Group(CLI_GROUP)
add_commands(plugin_group)
