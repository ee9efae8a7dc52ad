"""``kiln systemd install [--prefix DIR]``: the units and snippets shipped with the package, copied
where systemd reads them; ``kiln systemd show [NAME]`` prints one (CONTRACT: docs/operations.md,
"Install").

What goes where (under ``--prefix``, default ``/``):

    etc/systemd/system/kiln.service, kiln.socket      the units (systemd/ in the source tree)
    etc/systemd/system/kiln.service.d/10-exec.conf    ExecStart= of this kiln, when it is not
                                                      /usr/bin/kiln (a virtual environment)
    usr/lib/sysusers.d/claykiln.conf                  users and groups
    usr/lib/tmpfiles.d/claykiln.conf                  directories

A file already there with other content is left alone (and the command exits 1) unless
``--force``; identical files are left as they are. The command never runs ``systemctl``,
``systemd-sysusers`` or ``systemd-tmpfiles``: it prints those steps.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Final

import attrs
import click

from claykiln.daemon.cli.common import EXIT_REFUSED, EXIT_USAGE

__all__ = ["SHIPPED", "Placement", "placements", "systemd"]

# Package data (``claykiln.daemon.systemd``: the systemd/ folder) -> path under the prefix.
SHIPPED: Final = {
    "kiln.service": "etc/systemd/system/kiln.service",
    "kiln.socket": "etc/systemd/system/kiln.socket",
    "claykiln.sysusers.conf": "usr/lib/sysusers.d/claykiln.conf",
    "claykiln.tmpfiles.conf": "usr/lib/tmpfiles.d/claykiln.conf",
}
EXEC_DROP_IN: Final = "etc/systemd/system/kiln.service.d/10-exec.conf"
EXAMPLE_DROP_IN: Final = "kiln.service.d/example.conf"  # shipped, printed by ``show``
UNIT_KILN: Final = "/usr/bin/kiln"  # ExecStart= of kiln.service as shipped
# ProtectHome=yes in kiln.service hides these from the service.
HIDDEN_FROM_SERVICE: Final = (Path("/home"), Path("/root"), Path("/run/user"))


@attrs.frozen
class Placement:
    """One file to write: its path under the prefix and its content."""

    target: str
    content: str


def shipped_text(name: str) -> str:
    """The text of a shipped unit or snippet (package data), e.g. ``kiln.service``."""
    return resources.files("claykiln.daemon.systemd").joinpath(name).read_text("utf-8")


def placements(kiln: Path) -> list[Placement]:
    """Every file ``install`` writes, for the ``kiln`` executable the unit should run."""
    out = [Placement(target, shipped_text(name)) for name, target in SHIPPED.items()]
    if kiln != Path(UNIT_KILN):
        out.append(
            Placement(
                EXEC_DROP_IN,
                "# Written by `kiln systemd install`: run the kiln this package installed.\n"
                "[Service]\n"
                "ExecStart=\n"
                f"ExecStart={kiln} serve --config /etc/claykiln/kiln.toml\n",
            )
        )
    return out


def _this_kiln() -> Path:
    """The ``kiln`` script beside this interpreter (the virtual environment's), absolute."""
    return Path(sys.executable).absolute().parent / "kiln"


@click.group()
def systemd() -> None:
    """Install the systemd units shipped with this package."""


@systemd.command("install")
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Root to install under (e.g. a package build root).",
)
@click.option("--force", is_flag=True, help="Replace files that differ from the shipped ones.")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
def install(prefix: Path, force: bool, dry_run: bool) -> None:
    """Copy kiln.service, kiln.socket and the sysusers/tmpfiles snippets under PREFIX."""
    kiln = _this_kiln()
    kept = 0
    for place in placements(kiln):
        path = prefix / place.target
        if path.exists() and path.read_text("utf-8", errors="replace") == place.content:
            click.echo(f"unchanged  {path}")
            continue
        if path.exists() and not force:
            click.echo(f"kept       {path} (it differs from the shipped file; --force replaces)")
            kept += 1
            continue
        click.echo(f"{'would write' if dry_run else 'wrote'}  {path}")
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(place.content, "utf-8")
            tmp.chmod(0o644)
            tmp.replace(path)
    if any(kiln.is_relative_to(hidden) for hidden in HIDDEN_FROM_SERVICE):
        click.echo(
            f"kiln: warning: {kiln} is under {', '.join(map(str, HIDDEN_FROM_SERVICE))}, which "
            "kiln.service hides (ProtectHome=yes): install claykiln into /opt/claykiln/venv",
            err=True,
        )
    root = "" if prefix == Path("/") else f" (paths under {prefix})"
    click.echo(
        f"\nNext, as root{root}:\n"
        "  systemd-sysusers /usr/lib/sysusers.d/claykiln.conf\n"
        "  systemd-tmpfiles --create /usr/lib/tmpfiles.d/claykiln.conf\n"
        "  (write /etc/claykiln/kiln.toml and the credential files: docs/operations.md)\n"
        "  systemctl daemon-reload && systemctl enable --now kiln.socket kiln.service"
    )
    if kept:
        sys.exit(EXIT_REFUSED)


@systemd.command("show")
@click.argument("name", required=False)
def show(name: str | None) -> None:
    """Print a shipped file (NAME, e.g. kiln.service.d/example.conf), or list them."""
    if name is None:
        for known in (*SHIPPED, EXAMPLE_DROP_IN):
            click.echo(known)
        return
    if name not in (*SHIPPED, EXAMPLE_DROP_IN):
        known = ", ".join((*SHIPPED, EXAMPLE_DROP_IN))
        click.echo(f"kiln: no shipped file {name!r}; one of: {known}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(shipped_text(name), nl=False)
