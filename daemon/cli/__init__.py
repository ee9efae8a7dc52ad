"""The ``kiln`` command line (CONTRACT: names and flags are used by the unit, scripts, monitoring).

One module per command family; ``COMMANDS`` maps each command name to the module and attribute
that define it, loaded only when the command runs (``kiln --help`` and ``kiln status`` stay fast,
``demo`` and ``bench`` never load for other commands). To add a command: write its click command
in a module here (client commands use ``common.request``), add one line to ``COMMANDS``, and
document it in docs/operations.md. ``common`` holds the socket lookup, the request helper and
the exit codes; ``render`` the terminal views.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Final

import click

__all__ = ["COMMANDS", "main"]

COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "serve": ("claykiln.daemon.cli.serve", "serve"),
    "check-config": ("claykiln.daemon.cli.serve", "check_config"),
    "status": ("claykiln.daemon.cli.status", "status"),
    "hello": ("claykiln.daemon.cli.status", "hello"),
    "call": ("claykiln.daemon.cli.call", "call"),
    "breaker": ("claykiln.daemon.cli.breaker", "breaker"),
    "idempotency": ("claykiln.daemon.cli.idempotency", "idempotency"),
    "cache": ("claykiln.daemon.cli.cache", "cache"),
    "submit": ("claykiln.daemon.cli.jobs", "submit"),
    "jobs": ("claykiln.daemon.cli.jobs", "jobs"),
    "dlq": ("claykiln.daemon.cli.dlq", "dlq"),
    "quota": ("claykiln.daemon.cli.quota", "quota"),
    "demo": ("claykiln.daemon.demo.command", "demo_command"),
    "bench": ("claykiln.daemon.bench.command", "bench_command"),
}
# Commands whose attribute is a factory returning the command (they import heavy modules).
_FACTORIES: Final = frozenset({"demo", "bench"})


class _KilnGroup(click.Group):
    """Loads each command's module only when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr = entry
        found = getattr(importlib.import_module(module), attr)
        command: click.Command = found() if cmd_name in _FACTORIES else found
        return command


@click.group(cls=_KilnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", type=click.Path(path_type=Path), help="Daemon socket (client commands).")
@click.option("--config", type=click.Path(path_type=Path), help="Config file (TOML).")
@click.version_option(package_name="claykiln", prog_name="kiln")
@click.pass_context
def main(ctx: click.Context, socket: Path | None, config: Path | None) -> None:
    """claykiln: reliable calls to Clay and other HTTP APIs through a local daemon."""
    ctx.ensure_object(dict)
    ctx.obj["socket"] = socket
    ctx.obj["config"] = config
