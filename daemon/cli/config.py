"""``kiln config show`` (the effective config) and ``kiln config default`` (the embedded one).

``show`` prints, as TOML, what ``kiln serve --config FILE`` would run with: the file over the
embedded default (docs/configuration.md, "Your file and the embedded default"), validated
first (exit 2 listing every problem), with the paths it resolves in this environment as
comments and secrets redacted (``[daemon].secrets`` and the values of headers whose name marks
a credential). The output is itself a config file that loads to the same settings. ``default``
prints ``default.toml`` as shipped, comments included: a file to start from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import click

from claykiln.daemon.cli.common import load_config

__all__ = ["config", "redacted"]

REDACTED: Final = "<redacted>"


@click.group()
def config() -> None:
    """Print the effective config or the embedded default."""


@config.command("show")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.pass_context
def config_show(ctx: click.Context, path: Path | None) -> None:
    """Print the effective config of PATH (else --config, else the embedded default) as TOML."""
    from claykiln.daemon.config import ConfigError, effective_data
    from claykiln.daemon.config.overlay import REPLACE_TABLE
    from claykiln.daemon.config.toml_writer import dumps

    path = path or ctx.obj["config"]
    loaded = load_config(path)  # exits 2 listing every problem
    try:
        layers = effective_data(path)
    except ConfigError as exc:  # the file changed since it was loaded
        from claykiln.daemon.cli.common import EXIT_USAGE, fail

        fail(f"configuration error:\n{exc}", EXIT_USAGE)
    d = loaded.daemon
    head = [
        f"# The effective config of {loaded.source}: what `kiln serve"
        + (f" --config {path}`" if path is not None else "`")
        + " runs with.",
        "# Your file over the embedded default (`kiln config default`); keys left out take the",
        "# defaults in docs/configuration.md. Secrets are redacted.",
        "# Paths resolved in this environment (where not set below):",
        f"#   socket = {str(d.socket)!r}",
        f"#   state_dir = {str(d.state_dir)!r}",
        f"#   credentials_dir = {str(d.credentials_dir)!r}",
        "",
        "",
    ]
    data: dict[str, Any] = {}
    if layers.replace:
        data[REPLACE_TABLE] = {"replace": list(layers.replace)}
    data.update(redacted(layers.data))
    # Paths the file sets are written resolved, so the output loads the same from anywhere.
    own_daemon = data.get("daemon", {})
    for key in ("socket", "state_dir", "credentials_dir"):
        if key in own_daemon:
            own_daemon[key] = str(getattr(d, key))
    click.echo("\n".join(head) + dumps(data), nl=False)


@config.command("default")
def config_default() -> None:
    """Print the embedded default config (default.toml, with its comments)."""
    from claykiln.daemon.config import default_toml

    click.echo(default_toml(), nl=False)


def redacted(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``daemon.secrets`` and the values of credential-like headers (any
    ``headers`` table) replaced by ``<redacted>``."""
    from claykiln.daemon.logs import SENSITIVE_KEYS, SENSITIVE_SUFFIXES

    def sensitive(name: str) -> bool:
        name = name.lower().replace("_", "-")
        return name in SENSITIVE_KEYS or name.endswith(SENSITIVE_SUFFIXES)

    def walk(table: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if path == ("daemon",) and key == "secrets" and isinstance(value, list):
                out[key] = [REDACTED for _ in value]
            elif key == "headers" and isinstance(value, Mapping):
                out[key] = {h: REDACTED if sensitive(h) else v for h, v in value.items()}
            elif isinstance(value, Mapping):
                out[key] = walk(value, (*path, key))
            else:
                out[key] = value
        return out

    return walk(data, ())
