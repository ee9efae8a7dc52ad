"""The health monitor wired to a running daemon: its inputs, its settings, its start.

- ``health_monitor(runtime)``: a ``HealthMonitor`` (actors/health.py) reading the components
  of the ``Runtime`` the callable returns (bound before the monitor starts): roster states and
  liveness asks (``Mailbox.ping``) of the actors built on the shared plumbing, the store's usage
  against its ceiling (``max_map_size``, or the disk under it when that is smaller), the
  writer's counters, breaker, lane and pool snapshots, the dead-letter count, active probes
  through ``CallPipeline.probe`` and the credentials in force. Its settings are those of the
  running config (``health_settings``), so a reload applies at the next evaluation.
- ``start_health(runtime)``: starts it last (it reads everything) and makes it the pipeline's
  ``auth_watch``.
- ``KILN_TEST_WEDGE=ACTOR`` (test-only, docs/operations.md): once the monitor runs, the named
  actor's loop hangs (``Mailbox.wedge``), so tests can watch a real wedged actor turn the daemon
  unhealthy and stop the watchdog. Never set it in production.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from claykiln.actors.health import HealthMonitor
from claykiln.actors.health_checks import LaneSample
from claykiln.actors.health_inputs import (
    HealthInputs,
    HealthSettings,
    ProbeResult,
    StorageReading,
    UpstreamTraffic,
    UpstreamWatch,
    WriterReading,
)
from claykiln.actors.mailbox import mailbox_of
from claykiln.daemon.config.types import KilnConfig
from claykiln.daemon.logs import get_logger
from claykiln.daemon.runtime import Runtime

__all__ = ["PINGED_ACTORS", "WEDGE_ENV", "health_monitor", "health_settings", "start_health"]

log = get_logger("claykiln.health")

WEDGE_ENV: Final = "KILN_TEST_WEDGE"
# The actors asked for liveness, by roster name: those built on the shared Mailbox. The
# upstream pools have no inbox (their roster state is read); the monitor does not ask itself
# (the watchdog reads how old its snapshot is).
PINGED_ACTORS: Final[Mapping[str, Callable[[Runtime], object]]] = {
    "writer": lambda r: r.writer,
    "idempotency": lambda r: r.idempotency,
    "cache": lambda r: r.cache,
    "breakers": lambda r: r.breakers,
    "gate": lambda r: r.gate,
    "lanes": lambda r: r.lanes,
    "scheduler": lambda r: r.scheduler,
}


def health_settings(config: KilnConfig) -> HealthSettings:
    """What the monitor reads of ``config``: ``[daemon.health]``, each upstream's ``critical``
    and ``probe`` (probed only with an ``every``), the credential each operation sends, and
    ``[daemon.outbox] dlq_degraded``."""
    upstreams = {
        name: UpstreamWatch(
            critical=up.critical,
            probe_operation=up.probe.operation if up.probe and up.probe.every else None,
            probe_every=up.probe.every if up.probe else None,
        )
        for name, up in config.upstreams.items()
    }
    credentials: dict[str, tuple[str, str]] = {}
    for name, op in config.operations.items():
        auth = config.auth_for(op)
        if auth is not None:
            credentials[name] = (auth.credential, op.upstream)
    return HealthSettings(
        policy=config.daemon.health,
        upstreams=upstreams,
        credentials=credentials,
        credentials_dir=str(config.daemon.credentials_dir),
        dlq_degraded=config.daemon.outbox.dlq_degraded,
    )


def health_monitor(runtime: Callable[[], Runtime]) -> HealthMonitor:
    """The monitor of the daemon ``runtime()`` returns (called only once the monitor runs)."""
    memo: list[tuple[KilnConfig, HealthSettings]] = []

    def settings() -> HealthSettings:
        running = runtime().config
        if not memo or memo[0][0] is not running:
            memo[:] = [(running, health_settings(running))]
        return memo[0][1]

    def pingables() -> dict[str, Callable[[], Awaitable[None]]]:
        out: dict[str, Callable[[], Awaitable[None]]] = {}
        for name, actor_of in PINGED_ACTORS.items():
            mailbox = mailbox_of(actor_of(runtime()))
            if mailbox is not None:
                out[name] = mailbox.ping
        return out

    def probe(operation: str) -> Awaitable[ProbeResult]:
        return runtime().pipeline.probe(operation, None)

    def credential(name: str) -> str | None:
        value = runtime().credentials.get(name)
        if value is None:
            return None
        return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]

    inputs = HealthInputs(
        actors=lambda: dict(runtime().actors.states),
        pingables=pingables,
        storage=lambda: storage_reading(runtime()),
        writer=lambda: writer_reading(runtime()),
        breakers=lambda: {k: v.state.value for k, v in runtime().breakers.snapshot.items()},
        dead_jobs=lambda: runtime().dlq.size(),
        lanes=lambda: lane_samples(runtime()),
        traffic=lambda: upstream_traffic(runtime()),
        probe=probe,
        credential=credential,
    )
    return HealthMonitor(inputs, settings)


def storage_reading(runtime: Runtime) -> StorageReading:
    """Pages in use against the ceiling: ``max_map_size``, or what the disk can still give
    (pages in use + its free space) when that is smaller."""
    usage = runtime.store.usage()
    try:
        disk = os.statvfs(runtime.store.path)
    except OSError:
        return StorageReading(usage.used_bytes, usage.max_map_size)
    room = usage.used_bytes + disk.f_bavail * disk.f_frsize
    if room < usage.max_map_size:
        return StorageReading(usage.used_bytes, room, disk_bound=True)
    return StorageReading(usage.used_bytes, usage.max_map_size)


def writer_reading(runtime: Runtime) -> WriterReading:
    stats = runtime.writer.stats()
    return WriterReading(stats.transactions, stats.failed, runtime.writer.queued)


def lane_samples(runtime: Runtime) -> dict[str, LaneSample]:
    return {
        name: LaneSample(full=view.full and not view.retired, rejected=view.rejected)
        for name, view in runtime.lanes.views.items()
    }


def upstream_traffic(runtime: Runtime) -> dict[str, UpstreamTraffic]:
    out = {}
    for name, pool in runtime.pools.items():
        stats: dict[str, Any] = pool.stats()
        out[name] = UpstreamTraffic(
            answers=stats["answers"], failures=stats["connect_failures"] + stats["timeouts"]
        )
    return out


async def start_health(runtime: Runtime) -> None:
    """Start the monitor (after every other actor) and let the pipeline tell it of refused
    credentials; then apply ``KILN_TEST_WEDGE`` if a test set it."""
    runtime.pipeline.auth_watch = runtime.health
    await runtime.actors.start("health", runtime.health.run)
    wedged = os.environ.get(WEDGE_ENV)
    if wedged:
        actor_of = PINGED_ACTORS.get(wedged)
        mailbox = mailbox_of(actor_of(runtime)) if actor_of else None
        if mailbox is None:
            known = ", ".join(sorted(PINGED_ACTORS))
            msg = f"{WEDGE_ENV}={wedged!r} names no actor with a mailbox; use one of {known}"
            raise ValueError(msg)
        log.warning("health.test_wedge", actor=wedged, env=WEDGE_ENV)
        mailbox.wedge()
