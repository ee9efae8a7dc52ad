"""Where the daemon keeps its socket and state when the config does not say (CONTRACT).

- state dir: ``$STATE_DIRECTORY`` (systemd's StateDirectory=), else ``/var/lib/claykiln`` as root,
  else ``$XDG_STATE_HOME/claykiln`` (default ``~/.local/state/claykiln``).
- socket: ``$KILN_SOCKET`` for clients; for the daemon ``$RUNTIME_DIRECTORY/kiln.sock``
  (systemd's RuntimeDirectory=), else ``/run/claykiln/kiln.sock`` as root, else
  ``$XDG_RUNTIME_DIR/claykiln/kiln.sock``, else ``<state dir>/kiln.sock``.

Pure functions of the environment; the client library uses them too, so this imports nothing
of the server side.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "SOCKET_ENV",
    "SYSTEM_SOCKET",
    "client_socket_path",
    "default_socket_path",
    "default_state_dir",
]

SOCKET_ENV = "KILN_SOCKET"
SOCKET_NAME = "kiln.sock"


def _is_root() -> bool:
    return os.geteuid() == 0


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if _is_root():
        return Path("/var/lib/claykiln")
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "claykiln"


def default_socket_path(
    state_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Path:
    env = os.environ if env is None else env
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / SOCKET_NAME
    if _is_root():
        return Path("/run/claykiln") / SOCKET_NAME
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "claykiln" / SOCKET_NAME
    return (state_dir or default_state_dir(env)) / SOCKET_NAME


SYSTEM_SOCKET = Path("/run/claykiln") / SOCKET_NAME


def client_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The socket a client connects to: the argument, then ``$KILN_SOCKET``, then the default.

    The default is this user's own daemon (``default_socket_path()``) when that socket exists,
    else the system service's ``/run/claykiln/kiln.sock`` when that exists (a non-root app on a
    host running kiln.service needs no configuration), else the user default.
    """
    if explicit:
        return Path(explicit)
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    own = default_socket_path()
    if not own.exists() and SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return own
