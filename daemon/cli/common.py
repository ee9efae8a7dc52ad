"""What every client command shares: the socket lookup, one request, errors and exit codes.

Socket precedence for client commands: ``--socket``, then ``KILN_SOCKET``, then ``--config``'s
``[daemon].socket``, then the default path (``claykiln.daemon.client.client_socket_path``).

Exit codes: 0 success; 1 the daemon refused or failed the request (the error code is printed);
2 usage or configuration error; 3 the daemon is not reachable.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from claykiln.daemon.client import SOCKET_ENV, DaemonUnavailable, KilnError

__all__ = [
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "client_socket",
    "fail",
    "load_config",
    "pairs",
    "print_json",
    "request",
]

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"kiln: {message}", err=True)
    sys.exit(code)


def load_config(
    path: Path | None, socket: Path | None = None, state_dir: Path | None = None
) -> Any:
    from claykiln.daemon.config import ConfigError, load_config

    try:
        return load_config(path, socket=socket, state_dir=state_dir)
    except ConfigError as exc:
        fail(f"configuration error:\n{exc}", EXIT_USAGE)


def client_socket(socket: Path | None, config: Path | None) -> Path:
    if socket is not None:
        return socket
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    if config is not None:
        return Path(load_config(config).daemon.socket)
    from claykiln.daemon.client import client_socket_path

    return client_socket_path()


def request(ctx: click.Context, method: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
    from claykiln.daemon.client import Client

    path = client_socket(ctx.obj["socket"], ctx.obj["config"])
    try:
        with Client(path, timeout=timeout) as client:
            return client.request(method, args)
    except DaemonUnavailable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except KilnError as exc:
        extra = f" (retry after {exc.retry_after:.3f}s)" if exc.retry_after is not None else ""
        details = f"\n{json.dumps(exc.details, indent=2, default=str)}" if exc.details else ""
        fail(f"{exc.code}: {exc.message}{extra}{details}", EXIT_REFUSED)


def print_json(value: Any) -> None:
    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return obj.decode("utf-8", "replace")
        return str(obj)

    click.echo(json.dumps(value, indent=2, sort_keys=True, default=default))


def pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{option} takes key=value, got {item!r}", EXIT_USAGE)
        out[key] = value
    return out
