"""``kiln breaker list|open|close|reset|disable``."""

from __future__ import annotations

import sys

import click

from claykiln.daemon.cli.common import print_json, request

__all__ = ["breaker"]


@click.group()
def breaker() -> None:
    """List or force circuit breakers."""


@breaker.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def breaker_list(ctx: click.Context, as_json: bool) -> None:
    """Show every breaker and its state."""
    views = request(ctx, "breaker.list", {})
    if as_json or not sys.stdout.isatty():
        print_json(views)
        return
    from claykiln.daemon.cli.render import render_breakers

    render_breakers(views)


def _force(ctx: click.Context, name: str, state: str) -> None:
    print_json(request(ctx, "breaker.force", {"name": name, "state": state}))


@breaker.command("open")
@click.argument("name")
@click.pass_context
def breaker_open(ctx: click.Context, name: str) -> None:
    """Force a breaker open (calls fail fast until closed or reset)."""
    _force(ctx, name, "open")


@breaker.command("close")
@click.argument("name")
@click.pass_context
def breaker_close(ctx: click.Context, name: str) -> None:
    """Force a breaker closed (calls pass whatever the error rate)."""
    _force(ctx, name, "closed")


@breaker.command("reset")
@click.argument("name")
@click.pass_context
def breaker_reset(ctx: click.Context, name: str) -> None:
    """Return a breaker to automatic operation, closed, with a fresh window."""
    _force(ctx, name, "reset")


@breaker.command("disable")
@click.argument("name")
@click.pass_context
def breaker_disable(ctx: click.Context, name: str) -> None:
    """Stop a breaker from counting or refusing anything."""
    _force(ctx, name, "disabled")
