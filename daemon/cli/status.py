"""``kiln status`` and ``kiln hello``: what the running daemon says about itself.

``kiln status`` exits with the monitoring-plugin convention (Nagios, Icinga, Sensu; CONTRACT,
docs/operations.md): 0 healthy, 1 degraded, 2 unhealthy, 3 unknown (no daemon answers, or it
refused the request), with ``--json`` and ``--quiet`` alike. ``--quiet`` prints only the state,
for scripts and health probes.
"""

from __future__ import annotations

import sys
from typing import Final

import click

from claykiln.daemon.cli.common import EXIT_UNREACHABLE, print_json, request

__all__ = ["EXIT_OF_HEALTH", "EXIT_UNKNOWN", "hello", "status"]

EXIT_UNKNOWN: Final = EXIT_UNREACHABLE  # 3, UNKNOWN in the monitoring-plugin convention
EXIT_OF_HEALTH: Final = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option(
    "--quiet", "-q", is_flag=True, help="Print only the state: healthy, degraded or unhealthy."
)
@click.pass_context
def status(ctx: click.Context, as_json: bool, quiet: bool) -> None:
    """Show the daemon's health checks, gates, upstreams, lanes, storage and actors.

    Exits 0 healthy, 1 degraded, 2 unhealthy, 3 unknown (no daemon answers).
    """
    result = request(ctx, "status", {}, refusal_exit=lambda _: EXIT_UNKNOWN)
    state = str(result.get("health"))
    if quiet:
        click.echo(state)
    elif as_json or not sys.stdout.isatty():
        print_json(result)
    else:
        from claykiln.daemon.cli.render import render_status

        render_status(result)
    sys.exit(EXIT_OF_HEALTH.get(state, EXIT_UNKNOWN))


@click.command()
@click.pass_context
def hello(ctx: click.Context) -> None:
    """Print the daemon's protocol version and limits."""
    print_json(request(ctx, "hello", {}))
