"""The ``kiln`` command line (CONTRACT: names and flags are used by the unit, scripts, monitoring).

Socket precedence for client commands: ``--socket``, then ``KILN_SOCKET``, then ``--config``'s
``[daemon].socket``, then the default path (daemon/paths.py).

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

from claykiln.daemon.client._errors import DaemonUnavailable, KilnError
from claykiln.daemon.client._paths import SOCKET_ENV

__all__ = ["main"]

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"kiln: {message}", err=True)
    sys.exit(code)


def _load_config(
    path: Path | None, socket: Path | None = None, state_dir: Path | None = None
) -> Any:
    from claykiln.daemon.config import ConfigError, load_config

    try:
        return load_config(path, socket=socket, state_dir=state_dir)
    except ConfigError as exc:
        _fail(f"configuration error:\n{exc}", EXIT_USAGE)


def _client_socket(socket: Path | None, config: Path | None) -> Path:
    if socket is not None:
        return socket
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    if config is not None:
        return Path(_load_config(config).daemon.socket)
    from claykiln.daemon.client._paths import client_socket_path

    return client_socket_path()


def _request(ctx: click.Context, method: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
    from claykiln.daemon.client._sync import Client

    path = _client_socket(ctx.obj["socket"], ctx.obj["config"])
    try:
        with Client(path, timeout=timeout) as client:
            return client.request(method, args)
    except DaemonUnavailable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except KilnError as exc:
        extra = f" (retry after {exc.retry_after:.3f}s)" if exc.retry_after is not None else ""
        details = f"\n{json.dumps(exc.details, indent=2, default=str)}" if exc.details else ""
        _fail(f"{exc.code}: {exc.message}{extra}{details}", EXIT_REFUSED)


def _print_json(value: Any) -> None:
    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return obj.decode("utf-8", "replace")
        return str(obj)

    click.echo(json.dumps(value, indent=2, sort_keys=True, default=default))


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"{option} takes key=value, got {item!r}", EXIT_USAGE)
        out[key] = value
    return out


class _KilnGroup(click.Group):
    """Loads the heavy commands (demo, bench) only when they are asked for."""

    lazy: dict[str, tuple[str, str]] = {
        "bench": ("claykiln.daemon.bench.command", "bench_command"),
        "demo": ("claykiln.daemon.demo.command", "demo_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            import importlib

            module, factory = self.lazy[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), factory)()
            return command
        return super().get_command(ctx, cmd_name)


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


@main.command()
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
    config = _load_config(config_path, socket_path, state_dir)
    sys.exit(run_daemon(config, config_path=config_path, overrides=overrides))


@main.command("check-config")
@click.argument("path", type=click.Path(path_type=Path))
def check_config(path: Path) -> None:
    """Validate a config file and print what it defines."""
    from claykiln.daemon.config import describe

    config = _load_config(path)
    click.echo(describe(config))
    click.echo("config OK")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the daemon's health, connections, storage and actors."""
    result = _request(ctx, "status", {})
    if as_json or not sys.stdout.isatty():
        _print_json(result)
        return
    from claykiln.daemon.cli.render import render_status

    render_status(result)


@main.command()
@click.pass_context
def hello(ctx: click.Context) -> None:
    """Print the daemon's protocol version and limits."""
    _print_json(_request(ctx, "hello", {}))


@main.command()
@click.argument("operation")
@click.option("--param", "-p", multiple=True, help="Path parameter key=value.")
@click.option("--query", "-q", multiple=True, help="Query parameter key=value.")
@click.option("--header", "-H", multiple=True, help="Extra header key=value.")
@click.option("--json", "json_body", help="JSON request body.")
@click.option("--lane", help="Lane override.")
@click.option("--deadline-ms", type=int, help="Deadline for the whole call.")
@click.option("--idempotency-key", help="Idempotency key.")
@click.pass_context
def call(
    ctx: click.Context,
    operation: str,
    param: tuple[str, ...],
    query: tuple[str, ...],
    header: tuple[str, ...],
    json_body: str | None,
    lane: str | None,
    deadline_ms: int | None,
    idempotency_key: str | None,
) -> None:
    """Make one call through the daemon and print the result as JSON."""
    args: dict[str, Any] = {"operation": operation}
    if param:
        args["path_params"] = _pairs(param, "--param")
    if query:
        args["query"] = _pairs(query, "--query")
    if header:
        args["headers"] = _pairs(header, "--header")
    if json_body is not None:
        try:
            args["json"] = json.loads(json_body)
        except ValueError as exc:
            _fail(f"--json is not valid JSON: {exc}", EXIT_USAGE)
    if lane:
        args["lane"] = lane
    if deadline_ms is not None:
        args["deadline_ms"] = deadline_ms
    if idempotency_key:
        args["idempotency_key"] = idempotency_key
    timeout = (deadline_ms / 1000 + 5) if deadline_ms else 600.0
    _print_json(_request(ctx, "call", args, timeout=timeout))


@main.group()
def breaker() -> None:
    """List or force circuit breakers."""


@breaker.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def breaker_list(ctx: click.Context, as_json: bool) -> None:
    """Show every breaker and its state."""
    views = _request(ctx, "breaker.list", {})
    if as_json or not sys.stdout.isatty():
        _print_json(views)
        return
    from claykiln.daemon.cli.render import render_breakers

    render_breakers(views)


def _force(ctx: click.Context, name: str, state: str) -> None:
    _print_json(_request(ctx, "breaker.force", {"name": name, "state": state}))


@breaker.command("open")
@click.argument("name")
@click.pass_context
def breaker_open(ctx: click.Context, name: str) -> None:
    """Force a breaker open (calls fail fast until closed or reset)."""
    _force(ctx, name, "open")


@breaker.command("close")
@click.argument("name")
@click.pass_context
def breaker_close(ctx: click.Context, name: str) -> None:
    """Force a breaker closed (calls pass whatever the error rate)."""
    _force(ctx, name, "closed")


@breaker.command("reset")
@click.argument("name")
@click.pass_context
def breaker_reset(ctx: click.Context, name: str) -> None:
    """Return a breaker to automatic operation, closed, with a fresh window."""
    _force(ctx, name, "reset")


@breaker.command("disable")
@click.argument("name")
@click.pass_context
def breaker_disable(ctx: click.Context, name: str) -> None:
    """Stop a breaker from counting or refusing anything."""
    _force(ctx, name, "disabled")
