"""``openapi``: print the OpenAPI 3.1 description of this app's callback endpoint."""

from __future__ import annotations

import json
from typing import IO

import click
from flask import current_app
from flask.cli import with_appcontext

__all__ = ["openapi_command"]


@click.command("openapi")
@with_appcontext
@click.option(
    "--server", "server_url", help="Public base URL to list under 'servers', e.g. https://host."
)
@click.option(
    "--output",
    "-o",
    type=click.File("w"),
    default="-",
    help="Write to this file instead of standard output.",
)
def openapi_command(server_url: str | None, output: IO[str]) -> None:
    """Print the OpenAPI 3.1 description (JSON) of the callback endpoint.

    Needs the openapi extra: pip install 'flask-oa-recall[openapi]'.
    """
    from ..openapi import build_spec

    try:
        document = build_spec(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            server_url=server_url,
        )
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    output.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
