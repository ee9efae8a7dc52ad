"""``kiln serve`` (the daemon in the foreground) and ``kiln check-config``.

``serve`` finds its socket the way client commands do (``common.py``): ``--socket``, then
``KILN_SOCKET``, then the config's ``[daemon].socket``, then the default, so a daemon and its
clients agree without flags. ``check-config`` exits 0 for a valid file (warnings, such as a
missing credential file, are printed but do not fail it unless ``--strict``) and 2 listing
every problem found, in one pass.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from claykiln.daemon.cli.common import EXIT_USAGE, fail, load_config
from claykiln.daemon.client import SOCKET_ENV

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
    if socket_path is None and os.environ.get(SOCKET_ENV):
        socket_path = Path(os.environ[SOCKET_ENV])
    overrides = {"socket": socket_path, "state_dir": state_dir}
    config = load_config(config_path, socket_path, state_dir)
    sys.exit(run_daemon(config, config_path=config_path, overrides=overrides))


@click.command("check-config")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--strict", is_flag=True, help="Exit 2 on warnings too.")
@click.pass_context
def check_config(ctx: click.Context, path: Path | None, strict: bool) -> None:
    """Validate a config file (PATH, else --config, else the embedded default), check the
    credential files it names, and print what it defines."""
    from claykiln.daemon.config import check_config, describe

    path = path or ctx.obj["config"]
    found = check_config(path)
    for line in found.warnings:
        click.echo(f"kiln: warning: {line}", err=True)
    if found.config is None:
        fail(f"configuration error:\n{found.headline}", EXIT_USAGE)
    click.echo(describe(found.config))
    if found.warnings:
        n = len(found.warnings)
        verdict = f"config OK, with {n} warning{'' if n == 1 else 's'} (above)"
        if strict:
            fail(f"{verdict}; --strict fails on warnings", EXIT_USAGE)
        click.echo(verdict)
        return
    click.echo("config OK")
