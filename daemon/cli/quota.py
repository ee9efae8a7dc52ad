"""``kiln quota list|release``: rows per Clay webhook source against its lifetime cap."""

from __future__ import annotations

import sys
from typing import Any

import click

from claykiln.daemon.cli.common import print_json, request

__all__ = ["quota"]


@click.group()
def quota() -> None:
    """Clay's lifetime cap per webhook source: counts, alerts and holds."""


@quota.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def quota_list(ctx: click.Context, as_json: bool) -> None:
    """Every webhook source the daemon counted: rows, cap, share used, held, waiting jobs."""
    items: list[dict[str, Any]] = []
    args: dict[str, Any] = {"limit": 1000}
    while True:
        page = request(ctx, "quota.list", args)
        items.extend(page["items"])
        if page["next"] is None:
            break
        args["after"] = page["next"]
    if as_json or not sys.stdout.isatty():
        print_json(items)
        return
    if not items:
        click.echo("no webhook source counted yet")
    for item in items:
        used = item["used"]
        held = f"HELD ({item['held_by']})" if item["held"] else "open"
        click.echo(
            f"{item['source']:<60} {item['rows']:>7} / {item['cap'] or '?':<7} "
            f"{'' if used is None else f'{used:.0%}':>5}  {held:<12} waiting {item['waiting']}"
        )


@quota.command("release")
@click.argument("source")
@click.pass_context
def quota_release(ctx: click.Context, source: str) -> None:
    """Let a held source's jobs run again (admin): Clay raised its cap, or the count was wrong.
    A new 403 "Record limit reached" holds it again."""
    print_json(request(ctx, "quota.release", {"source": source}))
