"""The ``[daemon]`` section: paths (with their defaults from the environment), logging,
access control, limits, storage and the fallback cache's bounds. Part of
:func:`claykiln.daemon.config.build.build_config`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

from claykiln.actors.fallback import CacheBounds
from claykiln.daemon.client._paths import default_socket_path, default_state_dir
from claykiln.daemon.config.health import read_health
from claykiln.daemon.config.monitor import (
    METRICS_INTERVAL,
    TICK_INTERVAL,
    bounded_duration,
    prom_path,
)
from claykiln.daemon.config.outbox import read_daemon_outbox
from claykiln.daemon.config.schema import (
    Invalid,
    Parser,
    Table,
    boolean,
    choice,
    duration,
    integer,
    size,
)
from claykiln.daemon.config.types import (
    DaemonConfig,
    LimitsConfig,
    LogFormat,
    LogLevel,
    StorageConfig,
)
from claykiln.daemon.config.units import format_size

__all__ = ["LOG_LEVELS", "MAX_SOCKET_PATH_BYTES", "build_daemon"]

LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes including the terminating NUL


def build_daemon(
    t: Table, base_dir: Path, socket: Path | None, state_dir: Path | None, env: Mapping[str, str]
) -> DaemonConfig:
    """The daemon section; ``socket``/``state_dir`` (CLI flags) win over the table's keys.

    Invalid values are reported to ``t.problems`` and replaced by defaults in the result
    (the caller raises when any problem was found).
    """
    as_path = _path(base_dir)
    # Read the keys even when a flag overrides them, so they are still validated.
    state_key = t.get("state_dir", as_path, None)
    socket_key = t.get("socket", as_path, None)
    state = state_dir or state_key or default_state_dir(env)
    sock = socket or socket_key or default_socket_path(state, env)
    creds_dir = t.get("credentials_dir", as_path, None)
    if creds_dir is None:
        from_env = env.get("CREDENTIALS_DIRECTORY")
        creds_dir = Path(from_env) if from_env else state / "credentials"
    if len(os.fsencode(sock)) > MAX_SOCKET_PATH_BYTES:
        t.problems.add(
            f"{t.sub_path('socket')}: {str(sock)!r} is {len(os.fsencode(sock))} bytes; a Unix "
            f"socket path must be at most {MAX_SOCKET_PATH_BYTES} bytes (choose a shorter one)"
        )
    limits_t = t.table("limits") or Table({}, t.sub_path("limits"), t.problems)
    storage_t = t.table("storage") or Table({}, t.sub_path("storage"), t.problems)
    cache_t = t.table("cache") or Table({}, t.sub_path("cache"), t.problems)
    outbox_t = t.table("outbox") or Table({}, t.sub_path("outbox"), t.problems)
    health_t = t.table("health") or Table({}, t.sub_path("health"), t.problems)
    config = DaemonConfig(
        socket=sock,
        state_dir=state,
        credentials_dir=creds_dir,
        log_format=cast(LogFormat, t.get("log_format", choice("auto", "json", "console"), "auto")),
        log_level=cast(LogLevel, t.get("log_level", choice(*LOG_LEVELS), "info")),
        socket_mode=t.get("socket_mode", _octal_mode, 0o660),
        allowed_uids=t.get("allowed_uids", _ids(pwd.getpwnam, "user"), ()),
        allowed_gids=t.get("allowed_gids", _ids(grp.getgrnam, "group"), ()),
        admin_uids=t.get("admin_uids", _ids(pwd.getpwnam, "user"), ()),
        admin_gids=t.get("admin_gids", _ids(grp.getgrnam, "group"), ()),
        grace_period=t.get("grace_period", duration(example="20s"), 20.0),
        secrets=t.get("secrets", _secrets, (), sensitive=True),
        tick_interval=t.get(
            "tick_interval", bounded_duration(0.1, 60.0, example="1s"), TICK_INTERVAL
        ),
        metrics_textfile=t.get("metrics_textfile", prom_path(base_dir), None),
        metrics_interval=t.get(
            "metrics_interval", bounded_duration(1.0, 3600.0, example="5s"), METRICS_INTERVAL
        ),
        limits=_limits(limits_t),
        storage=_storage(storage_t),
        cache=_cache(cache_t),
        outbox=read_daemon_outbox(outbox_t),
        health=read_health(health_t),
    )
    t.finish()
    return config


def _limits(t: Table) -> LimitsConfig:
    d = LimitsConfig()
    limits = LimitsConfig(
        max_frame=t.get("max_frame", size(64, example="1MiB"), d.max_frame),
        max_array_len=t.get("max_array_len", integer(1, example=10000), d.max_array_len),
        max_map_len=t.get("max_map_len", integer(1, example=10000), d.max_map_len),
        # msgpack's unpacker overflows its stack beyond 1024 levels.
        max_depth=t.get("max_depth", integer(1, 1000, example=32), d.max_depth),
        max_containers=t.get("max_containers", integer(1, example=100000), d.max_containers),
        max_connections=t.get("max_connections", integer(1, example=256), d.max_connections),
        max_connections_per_uid=t.get(
            "max_connections_per_uid", integer(1, example=128), d.max_connections_per_uid
        ),
        max_in_flight=t.get("max_in_flight", integer(1, example=128), d.max_in_flight),
        idle_timeout=t.get("idle_timeout", duration(example="5m"), d.idle_timeout),
        frame_timeout=t.get("frame_timeout", duration(example="10s"), d.frame_timeout),
        reply_timeout=t.get("reply_timeout", duration(example="30s"), d.reply_timeout),
        max_reply_backlog=t.get(
            "max_reply_backlog", size(64 * 1024, example="4MiB"), d.max_reply_backlog
        ),
        status_max_age=t.get(
            "status_max_age", duration(example="100ms", allow_zero=True), d.status_max_age
        ),
        share_window=t.get("share_window", duration(example="1s", allow_zero=True), d.share_window),
        busy_poll=t.get("busy_poll", _busy_poll, d.busy_poll),
    )
    t.finish()
    return limits


MAX_BUSY_POLL: Final = 0.01  # seconds: a longer spin would hold the loop past its turns


def _busy_poll(raw: object) -> float:
    seconds = duration(example="0.5ms", allow_zero=True)(raw)
    if seconds > MAX_BUSY_POLL:
        msg = f"must be at most {MAX_BUSY_POLL * 1000:g}ms (0 turns busy polling off), e.g. '0.5ms'"
        raise Invalid(msg)
    return seconds


def _storage(t: Table) -> StorageConfig:
    d = StorageConfig()
    mib = 1024 * 1024
    storage = StorageConfig(
        map_size=t.get("map_size", size(mib, example="64MiB"), d.map_size),
        max_map_size=t.get("max_map_size", size(mib, example="4GiB"), d.max_map_size),
        sync=t.get("sync", boolean, d.sync),
    )
    if storage.max_map_size < storage.map_size and not {"map_size", "max_map_size"} & t.invalid:
        if "max_map_size" in t.data:
            why = f"must be at least map_size ({format_size(storage.map_size)})"
            t.problems.bad_value(t.sub_path("max_map_size"), t.data["max_map_size"], why)
        else:
            why = f"must be at most max_map_size ({format_size(d.max_map_size)} by default)"
            t.problems.bad_value(t.sub_path("map_size"), t.data["map_size"], why)
    t.finish()
    return storage


def _cache(t: Table) -> CacheBounds:
    """``[daemon.cache]``: how much the fallback cache may hold (the oldest answers go first)."""
    d = CacheBounds()
    bounds = CacheBounds(
        max_entries=t.get("max_entries", integer(1, example=10000), d.max_entries),
        max_bytes=t.get("max_bytes", size(1024, example="64MiB"), d.max_bytes),
    )
    t.finish()
    return bounds


def _path(base_dir: Path) -> Parser[Path]:
    def parse(raw: object) -> Path:
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            msg = 'must be a non-empty path string, e.g. "/var/lib/claykiln"'
            raise Invalid(msg)
        path = Path(raw).expanduser()
        return path if path.is_absolute() else base_dir / path

    return parse


def _octal_mode(raw: object) -> int:
    if isinstance(raw, str) and re.fullmatch(r"(0o)?[0-7]{3,4}", raw):
        mode = int(raw, 8)
        if mode <= 0o777:
            return mode
    if isinstance(raw, int) and not isinstance(raw, bool):
        msg = 'must be a quoted octal string like "0660" (a bare number reads as decimal)'
        raise Invalid(msg)
    msg = 'must be an octal permission string from "0000" to "0777", e.g. "0660"'
    raise Invalid(msg)


def _ids(lookup: Any, kind: str) -> Parser[tuple[int, ...]]:
    """A list of numeric ids or names (resolved now, via ``lookup``: pwd/grp)."""

    def parse(raw: object) -> tuple[int, ...]:
        rule = f"must be a list of numeric {kind} ids or {kind} names, e.g. [1000]"
        if not isinstance(raw, list):
            raise Invalid(rule)
        ids: list[int] = []
        for item in raw:
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                ids.append(item)
            elif isinstance(item, str) and item:
                try:
                    entry = lookup(item)
                except KeyError:
                    msg = f"{kind} {json.dumps(item)} does not exist on this host; {rule}"
                    raise Invalid(msg) from None
                ids.append(entry.pw_uid if kind == "user" else entry.gr_gid)
            else:
                raise Invalid(rule)
        return tuple(ids)

    return parse


def _secrets(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        msg = 'must be a list of non-empty strings, e.g. ["s3cr3t"]'
        raise Invalid(msg)
    return tuple(raw)
