"""The daemon's configuration: load, validate, describe (CONTRACT: docs/configuration.md).

``load_config(path)`` reads a TOML file (or, with no path, the embedded ``default.toml``),
checks every key, value and cross-reference, and returns a frozen :class:`KilnConfig`, or raises
:class:`ConfigError` whose message lists every problem found, one per line, each naming the key
path, the bad value and what is allowed. Precedence: explicit arguments (CLI flags) > the file >
defaults (``daemon/client/_paths.py``, ``$CREDENTIALS_DIRECTORY``, the embedded default's
sections).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from claykiln.actors.gate import RatePolicy
from claykiln.daemon.config.build import METHODS, build_config
from claykiln.daemon.config.overlay import Overlay, overlay
from claykiln.daemon.config.schema import ConfigError, Problems
from claykiln.daemon.config.types import (
    AuthConfig,
    DaemonConfig,
    KilnConfig,
    LimitsConfig,
    OperationConfig,
    StorageConfig,
    UpstreamConfig,
)
from claykiln.daemon.config.units import format_duration, format_size

__all__ = [
    "EMBEDDED_SOURCE",
    "METHODS",
    "RESTART_KEYS",
    "AuthConfig",
    "ConfigCheck",
    "ConfigError",
    "DaemonConfig",
    "KilnConfig",
    "LimitsConfig",
    "OperationConfig",
    "StorageConfig",
    "UpstreamConfig",
    "check_config",
    "default_toml",
    "describe",
    "effective_data",
    "load_config",
    "restart_required",
]

EMBEDDED_SOURCE = "<embedded default>"
# What a SIGHUP reload cannot change in a running daemon (docs/configuration.md, "Reload").
RESTART_KEYS = (
    "daemon.socket",
    "daemon.state_dir",
    "daemon.socket_mode",
    "daemon.log_format",
    "daemon.limits",
    "daemon.storage",
    "daemon.cache",
)


def default_toml() -> str:
    """The text of the embedded default config (``daemon/config/default.toml``)."""
    return resources.files("claykiln.daemon.config").joinpath("default.toml").read_text("utf-8")


def load_config(
    path: Path | None,
    *,
    socket: Path | None = None,
    state_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> KilnConfig:
    """The validated config from ``path`` (None: the embedded default).

    ``socket`` and ``state_dir`` (CLI flags) override the file; paths the file leaves out come
    from ``env`` (default ``os.environ``): ``STATE_DIRECTORY``/``XDG_STATE_HOME``,
    ``RUNTIME_DIRECTORY``/``XDG_RUNTIME_DIR``, ``CREDENTIALS_DIRECTORY``. Relative paths in a
    file are relative to the file's directory. Raises :class:`ConfigError` for a missing or
    unreadable file, a TOML syntax error (with line and column) and every invalid value.
    """
    return _load(path, socket=socket, state_dir=state_dir, env=env, warnings=None)


@attrs.frozen
class ConfigCheck:
    """What ``kiln check-config`` reports about one file, found in one pass.

    ``config`` is None when there are ``problems`` (each one line, as in :class:`ConfigError`);
    ``warnings`` says what may not work although the file is valid (a credential file missing).
    """

    source: str
    config: KilnConfig | None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    headline: str = ""  # the ConfigError's message when there are problems


def check_config(
    path: Path | None,
    *,
    socket: Path | None = None,
    state_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ConfigCheck:
    """Load ``path`` as :func:`load_config` does and check the credential files it names (a
    file the daemon could not use is a problem, a missing one a warning). Never raises
    ``ConfigError``: its problems are in the result."""
    source = EMBEDDED_SOURCE if path is None else str(path)
    warnings: list[str] = []
    try:
        config = _load(path, socket=socket, state_dir=state_dir, env=env, warnings=warnings)
    except ConfigError as exc:
        return ConfigCheck(source, None, exc.problems, tuple(warnings), headline=str(exc))
    return ConfigCheck(source, config, (), tuple(warnings))


def effective_data(path: Path | None) -> Overlay:
    """The TOML data ``path`` amounts to: the file over the embedded default (``overlay.py``),
    not validated (``load_config`` does that). Raises ``ConfigError`` for a file that cannot be
    read or parsed."""
    embedded = _parse(default_toml(), EMBEDDED_SOURCE)
    if path is None:
        return Overlay(data=embedded)
    return overlay(embedded, _parse(_read(path), str(path)), Problems())


def _load(
    path: Path | None,
    *,
    socket: Path | None,
    state_dir: Path | None,
    env: Mapping[str, str] | None,
    warnings: list[str] | None,
) -> KilnConfig:
    env = os.environ if env is None else env
    embedded = _parse(default_toml(), EMBEDDED_SOURCE)
    if path is None:
        data, source, base_dir = embedded, EMBEDDED_SOURCE, Path.cwd()
    else:
        data = _parse(_read(path), str(path))
        source, base_dir = str(path), path.parent.absolute()
    return build_config(
        data,
        source=source,
        base_dir=base_dir,
        embedded=embedded,
        socket=socket,
        state_dir=state_dir,
        env=env,
        warnings=warnings,
    )


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        msg = f"config file {path} does not exist"
        raise ConfigError(msg) from None
    except IsADirectoryError:
        msg = f"config file {path} is a directory; give the path of a .toml file"
        raise ConfigError(msg) from None
    except OSError as e:
        msg = f"cannot read config file {path}: {e.strerror or e}"
        raise ConfigError(msg) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        msg = f"{path}, line {line}: TOML syntax error: the file is not UTF-8 text"
        raise ConfigError(msg) from None


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(e))
        if where is None:
            msg = f"{source}: TOML syntax error: {reason} (at the end of the file)"
            raise ConfigError(msg) from None
        line, column = int(where.group(1)), int(where.group(2))
        lines = text.splitlines()
        excerpt = lines[line - 1] if 0 < line <= len(lines) else ""
        msg = (
            f"{source}, line {line}, column {column}: TOML syntax error: {reason}\n"
            f"    {excerpt}\n    {' ' * max(column - 1, 0)}^"
        )
        raise ConfigError(msg) from None


def describe(config: KilnConfig) -> str:
    """A short human summary for ``kiln check-config``: paths, upstreams, gates, lanes,
    operations (each with the gate that paces it)."""
    d = config.daemon
    out = [
        f"config {config.source}: OK",
        f"daemon: socket {d.socket} (mode {d.socket_mode:04o}), state {d.state_dir}, "
        f"credentials {d.credentials_dir}, log {d.log_format}/{d.log_level}",
        f"  limits: frame {format_size(d.limits.max_frame)}, {d.limits.max_connections} "
        f"connections, {d.limits.max_in_flight} in flight each, idle "
        f"{format_duration(d.limits.idle_timeout)}; storage {format_size(d.storage.map_size)}"
        f"..{format_size(d.storage.max_map_size)} sync={'on' if d.storage.sync else 'off'}",
        f"upstreams ({len(config.upstreams)}):",
    ]
    for up in config.upstreams.values():
        auth = f"{up.auth.header} <- {up.auth.credential}" if up.auth else "none"
        b, r = up.breaker, up.retry
        out.append(
            f"  {up.name}: {up.base_url}  auth {auth}  rate {_pacing(up.rate)}  breaker "
            f"{b.error_threshold:.0%} of >={b.volume_threshold} in {format_duration(b.window)}"
            f", reset {format_duration(b.reset_timeout)}  retry {r.attempts}x "
            f"{format_duration(r.base)}..{format_duration(r.cap)}"
        )
    if config.gates:
        out.append(f"gates ({len(config.gates)}, besides one per upstream):")
        for name, policy in config.gates.items():
            out.append(f"  {name}: {_pacing(policy)}")
    out.append(f"lanes ({len(config.lanes)}):")
    for name, lane in config.lanes.items():
        out.append(
            f"  {name}: concurrency {lane.concurrency}, queue {lane.queue}, "
            f"max wait {format_duration(lane.max_wait)}"
        )
    out.append(f"operations ({len(config.operations)}):")
    for op in config.operations.values():
        flags = [f for f in ("repeat_safe", "idempotent", "cacheable") if getattr(op, f)]
        op_auth = config.auth_for(op)
        out.append(
            f"  {op.name}: {op.method} {op.upstream}{op.path}  lane {op.lane}  gate {op.gate}"
            f"  timeout "
            f"{op.timeout_class} ({format_duration(op.timeout)})  auth "
            f"{op_auth.header if op_auth else 'none'}" + (f"  {' '.join(flags)}" if flags else "")
        )
    return "\n".join(out)


def _pacing(policy: RatePolicy | None) -> str:
    if policy is None:
        return "unpaced (Retry-After closures only)"
    return (
        f"{policy.per_second:g}/s burst {policy.burst}, margin {format_duration(policy.margin)}"
        if policy.margin
        else f"{policy.per_second:g}/s burst {policy.burst}"
    )


def restart_required(old: KilnConfig, new: KilnConfig) -> tuple[str, ...]:
    """The :data:`RESTART_KEYS` whose values differ between ``old`` and ``new``.

    A reload applies everything else; these keep their old values until a restart.
    """
    changed = []
    for key in RESTART_KEYS:
        attr = key.removeprefix("daemon.")
        if getattr(old.daemon, attr) != getattr(new.daemon, attr):
            changed.append(key)
    return tuple(changed)
