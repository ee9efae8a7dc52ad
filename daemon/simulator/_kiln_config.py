"""A claykiln config for trying the daemon against this simulator (``--kiln-config DIR``).

``write_kiln_config`` writes ``DIR/kiln.toml`` (the embedded default with Clay at the
simulator's URL; socket, state and credentials under ``DIR``) and ``DIR/credentials/`` holding
the simulator's API key and a webhook token, so ``kiln serve --config DIR/kiln.toml`` works
against it at once (docs/simulator.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["WEBHOOK_TOKEN", "write_kiln_config"]

# Webhooks the simulator creates on first use take any token; this one fills the credential.
WEBHOOK_TOKEN: Final = "sim-webhook-token"


def kiln_config_text(url: str, directory: Path) -> str:
    """The config file for a simulator at ``url`` (paths relative to ``directory``)."""
    return (
        f"# claykiln against the Clay simulator at {url}, written by\n"
        f"# `python -m claykiln.daemon.simulator --kiln-config {directory}`.\n"
        f"# Run it: kiln serve --config {directory / 'kiln.toml'}\n"
        "# Everything not set here comes from the embedded default (`kiln config default`).\n"
        "[daemon]\n"
        'socket = "kiln.sock"\n'
        'state_dir = "state"\n'
        'credentials_dir = "credentials"\n'
        "\n"
        "[upstreams.clay]\n"
        f'base_url = "{url}"\n'
    )


def write_kiln_config(directory: Path, url: str, api_key: str) -> Path:
    """Write the config and the credentials under ``directory``; the config's path."""
    creds = directory / "credentials"
    creds.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, value in (("clay-api-key", api_key), ("clay-webhook-token", WEBHOOK_TOKEN)):
        _write(creds / name, value + "\n", 0o600)
    config = directory / "kiln.toml"
    _write(config, kiln_config_text(url, directory), 0o644)
    return config


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
