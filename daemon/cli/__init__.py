"""The ``kiln`` command line (CONTRACT: names and flags are used by the unit, scripts, monitoring).

One module per command family; ``COMMANDS`` maps each command name to the module and attribute
that define it, loaded only when the command runs (``kiln --help`` and ``kiln status`` stay fast,
``demo`` and ``bench`` never load for other commands). To add a command: write its click command
in a module here (client commands use ``common.request``), add one line to ``COMMANDS``, and
document it in docs/operations.md. ``common`` holds the socket lookup, the request helper and
the exit codes; ``render`` the terminal views. ``--socket`` and ``--config`` are accepted before
the command or after it (every command but ``demo`` and ``bench`` takes them).
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
    "config": ("claykiln.daemon.cli.config", "config"),
    "systemd": ("claykiln.daemon.cli.systemd", "systemd"),
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
    "top": ("claykiln.daemon.cli.top", "top"),
    "metrics": ("claykiln.daemon.cli.metrics", "metrics"),
    "demo": ("claykiln.daemon.demo.command", "demo_command"),
    "bench": ("claykiln.daemon.bench.command", "bench_command"),
}
# Commands whose attribute is a factory returning the command (they import heavy modules).
_FACTORIES: Final = frozenset({"demo", "bench"})


# Options of ``kiln`` itself that every command also takes after its name (``kiln status
# --socket PATH`` is ``kiln --socket PATH status``); a command with an option of its own by that
# name (``serve --config``) keeps its own.
_GLOBAL_OPTIONS: Final = (
    ("--socket", "Daemon socket (client commands; also accepted before the command)."),
    ("--config", "Config file (TOML; also accepted before the command)."),
    (
        "--connect-timeout",
        "Seconds a client command waits for a daemon that is not answering yet (restarting); "
        "0 tries once (also accepted before the command).",
    ),
)
CONNECT_TIMEOUT_ENV: Final = "KILN_CONNECT_TIMEOUT"
CONNECT_TIMEOUT_TYPE: Final = click.FloatRange(0.0, 3600.0)


def _remember(ctx: click.Context, param: click.Parameter, value: Path | float | None) -> None:
    if value is not None and param.name is not None:
        ctx.find_root().ensure_object(dict)[param.name] = value


def _take_global_options(command: click.Command) -> None:
    """Give ``command`` (and, for a group, each subcommand) the options of ``_GLOBAL_OPTIONS``
    it lacks; once per command object."""
    if getattr(command, "_kiln_global_options", False):
        return
    taken = {opt for param in command.params for opt in param.opts}
    for opt, help_text in _GLOBAL_OPTIONS:
        if opt not in taken:
            command.params.append(
                click.Option(
                    [opt],
                    type=CONNECT_TIMEOUT_TYPE
                    if opt == "--connect-timeout"
                    else click.Path(path_type=Path),
                    expose_value=False,
                    callback=_remember,
                    help=help_text,
                )
            )
    command._kiln_global_options = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _take_global_options(sub)


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
        if cmd_name not in _FACTORIES:
            _take_global_options(command)
        return command


@click.group(cls=_KilnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", type=click.Path(path_type=Path), help="Daemon socket (client commands).")
@click.option("--config", type=click.Path(path_type=Path), help="Config file (TOML).")
@click.option(
    "--connect-timeout",
    type=CONNECT_TIMEOUT_TYPE,
    envvar=CONNECT_TIMEOUT_ENV,
    help=(
        "Seconds a client command waits for a daemon that is not answering yet (a restart); "
        f"0 tries once.  [default: 5; env: {CONNECT_TIMEOUT_ENV}]"
    ),
)
@click.version_option(package_name="claykiln", prog_name="kiln")
@click.pass_context
def main(
    ctx: click.Context, socket: Path | None, config: Path | None, connect_timeout: float | None
) -> None:
    """claykiln: reliable calls to Clay and other HTTP APIs through a local daemon."""
    obj = ctx.ensure_object(dict)
    # The command's own options, parsed after this runs, override (``_remember``).
    obj["socket"] = socket
    obj["config"] = config
    obj["connect_timeout"] = connect_timeout
