"""Reload (SIGHUP): apply a new config to a running daemon without dropping in-flight work.

Promises:
- The config file is read again (with the same command-line overrides). A bad one, or an
  unreadable credential file, keeps the old config in force and logs ``config.reload_failed``
  (an alert); nothing changes.
- A good one applies lanes, breaker thresholds, rate policies, operations (with their
  idempotency and cache settings), credentials and the log level in place; an upstream the
  reload adds gets its pool started now, and the pool of one it removes is stopped (calls in
  flight on it finish; their connections close as they end).
- Keys that need a restart (socket, state dir, socket mode, log format, limits, storage, the
  cache's bounds, and the connection settings of running upstream pools: base URL, size,
  headers, HTTP client, connect timeout) are logged (``config.restart_required``) and keep
  their running values in the running config, so ``status`` and ``hello`` keep telling the
  truth and a value set back to the one in use is no change.
- systemd sees ``RELOADING=1`` and then ``READY=1`` whichever way it ends.

``reload_config`` works on the daemon's ``Runtime`` (``runtime.py``) and a config loader (the
lifecycle's ``load_config`` with the command-line overrides bound); it never sees the lifecycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs

from claykiln.actors.breaker_types import BreakerPolicy
from claykiln.daemon import sdnotify, wiring
from claykiln.daemon.config import ConfigError, restart_required
from claykiln.daemon.config.credentials import CredentialError
from claykiln.daemon.config.types import KilnConfig, UpstreamConfig
from claykiln.daemon.logs import alert, configure_logging, get_logger
from claykiln.daemon.runtime import Runtime, load_credentials, routes, start_pools

__all__ = ["keep_restart_only", "pool_changes", "reload_config", "retire_pools"]

log = get_logger("claykiln.daemon")  # reload events are the daemon's events

# What a running pool was built with (the other timeout classes are read per call).
POOL_RESTART_KEYS: Final = (
    "base_url",
    "timeouts.connect",
    "max_connections",
    "headers",
    "http_client",
)


def _pool_value(up: UpstreamConfig, key: str) -> object:
    return up.timeouts.connect if key == "timeouts.connect" else getattr(up, key)


def pool_changes(old: KilnConfig, new: KilnConfig) -> list[str]:
    """Connection settings of running upstream pools that a reload cannot change in place.

    ``old`` is the running config, whose upstreams carry what their pools run with
    (``keep_restart_only``), so a value set back to the one in use is no change.
    """
    out = []
    for name, up in new.upstreams.items():
        before = old.upstreams.get(name)
        if before is None:
            continue  # a new upstream: its pool starts on reload
        for key in POOL_RESTART_KEYS:
            if _pool_value(before, key) != _pool_value(up, key):
                out.append(f"upstreams.{name}.{key}")
    return out


def keep_restart_only(old: KilnConfig, new: KilnConfig) -> KilnConfig:
    """``new`` with the restart-only ``[daemon]`` keys, and the connection settings of every
    upstream whose pool keeps running, put back to their running values."""
    upstreams = {}
    for name, up in new.upstreams.items():
        before = old.upstreams.get(name)
        if before is not None:
            up = attrs.evolve(
                up,
                base_url=before.base_url,
                timeouts=attrs.evolve(up.timeouts, connect=before.timeouts.connect),
                max_connections=before.max_connections,
                headers=before.headers,
                http_client=before.http_client,
            )
        upstreams[name] = up
    return attrs.evolve(
        new,
        upstreams=upstreams,
        daemon=attrs.evolve(
            new.daemon,
            socket=old.daemon.socket,
            state_dir=old.daemon.state_dir,
            socket_mode=old.daemon.socket_mode,
            log_format=old.daemon.log_format,
            limits=old.daemon.limits,
            storage=old.daemon.storage,
            cache=old.daemon.cache,
        ),
    )


def retire_pools(runtime: Runtime, config: KilnConfig) -> list[str]:
    """Stop the pools of upstreams ``config`` no longer has; their names. Calls in flight on
    such a pool finish (the pipeline no longer routes new ones to it)."""
    gone = [name for name in runtime.pools if name not in config.upstreams]
    for name in gone:
        del runtime.pools[name]
        runtime.actors.retire(f"upstream.{name}")
    return gone


async def reload_config(runtime: Runtime, load: Callable[[], KilnConfig]) -> bool:
    """Apply the config ``load`` returns to ``runtime``, or keep the old one and say why.
    True when applied.

    ``load`` raises ``ConfigError`` for a bad file; that, or an unreadable credential file, is
    logged and answered with False, never raised.
    """
    sdnotify.reloading()
    try:
        new = load()
        creds = load_credentials(new)
    except (ConfigError, CredentialError) as exc:
        alert(
            log,
            "config.reload_failed",
            severity="warning",
            error=str(exc),
            config=runtime.config.source,
        )
        sdnotify.ready()
        return False
    old = runtime.config
    needs_restart = [*restart_required(old, new), *pool_changes(old, new)]
    # Keys that need a restart keep their running values, so status and hello stay true.
    new = keep_restart_only(old, new)
    if needs_restart:
        log.warning("config.restart_required", keys=needs_restart)
    runtime.credentials = creds
    # An upstream the reload adds gets its pool now.
    await start_pools(runtime.actors, runtime.pools, new, creds)
    runtime.breakers.reconfigure(wiring.breaker_policies(new), BreakerPolicy())
    await runtime.gate.reconfigure(wiring.rate_policies(new))
    await runtime.lanes.reconfigure(wiring.lane_policies(new))
    runtime.pipeline.reconfigure(wiring.operations(new, creds), routes(runtime.pools, new))
    retire_pools(runtime, new)  # each pool logs upstream.pool_stopped as it ends
    runtime.calls.reconfigure(wiring.call_guards(new))
    configure_logging(
        fmt=old.daemon.log_format,
        level=new.daemon.log_level,
        secrets=[*new.daemon.secrets, *creds.secrets()],
    )
    runtime.config = new
    log.info("config.reloaded", config=new.source, restart_required=needs_restart)
    sdnotify.ready()
    return True
