"""``kiln serve`` (the daemon in the foreground) and ``kiln check-config``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from claykiln.daemon.cli.common import load_config

__all__ = ["check_config", "serve"]


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="Socket path.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="State directory.")
@click.pass_context
def serve(
    ctx: click.Context,
    config_path: Path | None,
    socket_path: Path | None,
    state_dir: Path | None,
) -> None:
    """Run the daemon in the foreground (systemd: Type=notify)."""
    from claykiln.daemon.app import run_daemon

    config_path = config_path or ctx.obj["config"]
    socket_path = socket_path or ctx.obj["socket"]
    overrides = {"socket": socket_path, "state_dir": state_dir}
    config = load_config(config_path, socket_path, state_dir)
    sys.exit(run_daemon(config, config_path=config_path, overrides=overrides))


@click.command("check-config")
@click.argument("path", type=click.Path(path_type=Path))
def check_config(path: Path) -> None:
    """Validate a config file and print what it defines."""
    from claykiln.daemon.config import describe

    config = load_config(path)
    click.echo(describe(config))
    click.echo("config OK")
