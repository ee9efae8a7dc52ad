"""``kiln status`` and ``kiln hello``: what the running daemon says about itself."""

from __future__ import annotations

import sys

import click

from claykiln.daemon.cli.common import print_json, request

__all__ = ["hello", "status"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the daemon's health, connections, storage and actors."""
    result = request(ctx, "status", {})
    if as_json or not sys.stdout.isatty():
        print_json(result)
        return
    from claykiln.daemon.cli.render import render_status

    render_status(result)


@click.command()
@click.pass_context
def hello(ctx: click.Context) -> None:
    """Print the daemon's protocol version and limits."""
    print_json(request(ctx, "hello", {}))
