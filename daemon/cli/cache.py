"""``kiln cache list [--operation OP]`` and ``kiln cache purge [--operation OP]`` (admin)."""

from __future__ import annotations

import sys
from typing import Any

import click

from claykiln.daemon.cli.common import print_json, request

__all__ = ["cache"]


@click.group()
def cache() -> None:
    """List or purge the last good answers the fallback cache keeps."""


@cache.command("list")
@click.option("--operation", "-o", help="Only this operation's answers.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cache_list(ctx: click.Context, operation: str | None, limit: int, as_json: bool) -> None:
    """Show the kept answers: operation, key, age, size and status."""
    args: dict[str, Any] = {"limit": limit}
    if operation:
        args["operation"] = operation
    entries = request(ctx, "cache.list", args)
    if as_json or not sys.stdout.isatty():
        print_json(entries)
        return
    if not entries:
        click.echo("no answers kept")
        return
    for entry in entries:
        click.echo(
            f"{entry['operation']:<20} {entry['key'][:40]:<40} age {entry['age']:>10.1f}s "
            f"{entry['size']:>8} B  status {entry['status']}"
        )


@cache.command("purge")
@click.option("--operation", "-o", help="Only this operation's answers (default: all).")
@click.pass_context
def cache_purge(ctx: click.Context, operation: str | None) -> None:
    """Delete kept answers (admin); prints how many."""
    print_json(request(ctx, "cache.purge", {"operation": operation} if operation else {}))
