"""What every client command shares: the socket lookup, one request, errors and exit codes.

Socket precedence, the same for client commands and ``kiln serve`` (so both sides agree when
neither names a socket): ``--socket`` (before or after the command), then ``KILN_SOCKET``, then
``[daemon].socket`` of ``--config`` FILE, then the default. A client's default is its own
daemon's socket (``claykiln.daemon.client.client_socket_path``) when that exists, else the
socket ``/etc/claykiln/kiln.toml`` (the system service's config) names when that exists, else
``/run/claykiln/kiln.sock`` when that exists, else its own default again (so the error names it).

Exit codes (CONTRACT, docs/operations.md): 0 success; 1 the daemon refused or failed the
request (the error code is printed); 2 usage or configuration error; 3 the daemon is not
reachable; ``kiln call`` also 4 and 5 for an upstream's 4xx and 5xx answers (``call.py``).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NoReturn

import click

from claykiln.daemon.client import SOCKET_ENV, DaemonUnavailable, KilnError

__all__ = [
    "EXIT_CLIENT_ERROR",
    "EXIT_REFUSED",
    "EXIT_SERVER_ERROR",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "SYSTEM_CONFIG",
    "call_args",
    "client_socket",
    "connect_timeout",
    "error_line",
    "fail",
    "load_config",
    "pairs",
    "print_json",
    "request",
    "system_config_socket",
    "unreachable",
]

EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_CLIENT_ERROR: Final = 4  # kiln call: the upstream answered 4xx (httpie's --check-status)
EXIT_SERVER_ERROR: Final = 5  # kiln call: the upstream answered 5xx
CONNECT_TIMEOUT: Final = 5.0  # seconds a client command waits for a restarting daemon
# The config file kiln.service runs with (systemd/kiln.service, ExecStart=).
SYSTEM_CONFIG: Final = Path("/etc/claykiln/kiln.toml")


def fail(message: str, code: int) -> NoReturn:
    """Print ``kiln: message`` on stderr and exit with ``code``."""
    click.echo(f"kiln: {message}", err=True)
    sys.exit(code)


def load_config(
    path: Path | None, socket: Path | None = None, state_dir: Path | None = None
) -> Any:
    """The validated config (the embedded default for None); exits 2 listing every problem."""
    from claykiln.daemon.config import ConfigError, load_config

    try:
        return load_config(path, socket=socket, state_dir=state_dir)
    except ConfigError as exc:
        fail(f"configuration error:\n{exc}", EXIT_USAGE)


def system_config_socket(path: Path | None = None) -> Path | None:
    """``[daemon].socket`` of the system service's config (``path``, default
    :data:`SYSTEM_CONFIG`), or None when the file is absent, unreadable, not TOML or sets no
    socket (a relative path is relative to the file's directory)."""
    path = SYSTEM_CONFIG if path is None else path
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    daemon = data.get("daemon")
    socket = daemon.get("socket") if isinstance(daemon, dict) else None
    if not isinstance(socket, str) or not socket:
        return None
    return path.parent / Path(socket).expanduser()


def client_socket(socket: Path | None, config: Path | None) -> tuple[Path, str]:
    """The socket a client command connects to and where that path came from (for errors)."""
    if socket is not None:
        return socket, "--socket"
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV]), SOCKET_ENV
    if config is not None:
        return Path(load_config(config).daemon.socket), f"[daemon].socket of {config}"
    from claykiln.daemon.client import client_socket_path
    from claykiln.daemon.client._paths import SYSTEM_SOCKET, default_socket_path

    own = default_socket_path()
    if not own.exists():
        configured = system_config_socket()
        if configured is not None and configured.exists():
            return configured, f"[daemon].socket of {SYSTEM_CONFIG}"
    path = client_socket_path()
    return path, "the system service's socket" if path == SYSTEM_SOCKET else "the default"


def error_line(exc: KilnError) -> str:
    """``code: message``, with ``retry in N s`` when the daemon gave a time the message does not
    already say, and the details as indented JSON below."""
    line = f"{exc.code}: {exc.message}"
    if exc.retry_after is not None and exc.retry_after > 0 and "retry in" not in exc.message:
        line += f" (retry in {exc.retry_after:.3f} s)"
    if exc.details:
        line += f"\n{json.dumps(exc.details, indent=2, default=str)}"
    return line


def request(
    ctx: click.Context,
    method: str,
    args: dict[str, Any],
    timeout: float = 30.0,
    *,
    refusal_exit: Callable[[KilnError], int] | None = None,
) -> Any:
    """Send one request to the daemon and return its result; exits 3 when no daemon answers
    (naming the socket, where that path came from and how to name another) and, with the error
    line, 1 (or what ``refusal_exit`` says) when the daemon refuses."""
    from claykiln.daemon.client import Client

    path, origin = client_socket(ctx.obj["socket"], ctx.obj["config"])
    try:
        with Client(path, timeout=timeout, connect_timeout=connect_timeout(ctx)) as client:
            return client.request(method, args)
    except DaemonUnavailable as exc:
        unreachable(exc, path, origin)
    except KilnError as exc:
        fail(error_line(exc), refusal_exit(exc) if refusal_exit is not None else EXIT_REFUSED)


def unreachable(exc: DaemonUnavailable, path: Path, origin: str) -> NoReturn:
    """Exit 3 for ``exc``: the socket, where its path came from, how long a daemon that looked
    like it was restarting was waited for, and how to name another socket."""
    reason = exc.details.get("reason", "no answer")
    waited = exc.details.get("waited_s")
    if isinstance(waited, int | float):
        tried = "tried once" if waited <= 0.001 else f"retried for {waited:g} s"
        reason = f"{reason}; {tried}, --connect-timeout SECONDS waits longer"
    fail(
        f"{exc.code}: no claykiln daemon answers at {path} ({origin}: {reason}); start one "
        f"with `kiln serve`, or name its socket with --socket PATH or {SOCKET_ENV}=PATH",
        EXIT_UNREACHABLE,
    )


def connect_timeout(ctx: click.Context) -> float:
    """How long a client command waits for a daemon not answering yet: ``--connect-timeout``
    (or ``KILN_CONNECT_TIMEOUT``), else ``CONNECT_TIMEOUT``; 0 is one attempt, no waiting (the
    client's own minimum, 1 ms)."""
    value = (ctx.obj or {}).get("connect_timeout")
    return CONNECT_TIMEOUT if value is None else max(float(value), 0.001)


def print_json(value: Any) -> None:
    """``value`` as indented, key-sorted JSON on stdout (bytes as text)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return obj.decode("utf-8", "replace")
        return str(obj)

    click.echo(json.dumps(value, indent=2, sort_keys=True, default=default))


def pairs(values: tuple[str, ...], option: str, *, header: bool = False) -> dict[str, str]:
    """``key=value`` items as a dict; exits 2 naming ``option`` for an item without ``=``.

    With ``header``, ``Name: value`` (curl's and httpie's form) is accepted too: an item is split
    at whichever of ``:`` and ``=`` comes first (neither can be part of a header name), and the
    value's surrounding spaces are dropped.
    """
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if header:
            name, colon, rest = item.partition(":")
            if colon and (not sep or len(name) < len(key)):
                key, sep, value = name, colon, rest
            key, value = key.strip(), value.strip()
        if not sep or not key:
            form = 'key=value or "Name: value"' if header else "key=value"
            fail(f"{option} takes {form}, got {item!r}", EXIT_USAGE)
        out[key] = value
    return out


def call_args(
    operation: str,
    *,
    param: tuple[str, ...],
    query: tuple[str, ...],
    header: tuple[str, ...],
    json_body: str | None,
    lane: str | None,
    deadline_ms: int | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    """The ``call`` / ``submit`` arguments the shared options give (only those set); exits 2
    naming the option for a malformed ``--param``/``--query``/``--header`` or ``--json``."""
    args: dict[str, Any] = {"operation": operation}
    if param:
        args["path_params"] = pairs(param, "--param")
    if query:
        args["query"] = pairs(query, "--query")
    if header:
        args["headers"] = pairs(header, "--header", header=True)
    if json_body is not None:
        try:
            args["json"] = json.loads(json_body)
        except ValueError as exc:
            fail(f"--json is not valid JSON: {exc}", EXIT_USAGE)
    if lane:
        args["lane"] = lane
    if deadline_ms is not None:
        args["deadline_ms"] = deadline_ms
    if idempotency_key:
        args["idempotency_key"] = idempotency_key
    return args
