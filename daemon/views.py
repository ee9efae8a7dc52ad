"""What a running daemon shows: read-side views over its ``Runtime`` (``runtime.py``).

These functions own nothing and start nothing; the RPC methods, the server's peer checks and the
watchdog call them once the daemon has started. They promise:
- ``status(runtime)``: a header (version, pid, uptime, health, config, socket) and one section
  per component, in ``STATUS_SECTIONS`` order (checks, server, storage, actors, breakers, gate,
  lanes, idempotency, cache, outbox, upstreams, process). A new component adds its section
  there, in one place.
- ``health(runtime)``: ``healthy``, ``degraded`` or ``unhealthy``, the health monitor's latest
  snapshot (actors/health.py: one check per input, damped; docs/alerting.md, "Health"); its
  checks are ``status``'s ``checks`` section, each with its state, reason and since when.
- ``limits_view(config)``: the protocol and connection limits ``hello`` reports (restart-only).
- ``breaker_keys()`` / ``breaker_view()``: what ``breaker.force`` checks and answers with.
- ``storage_mark()`` / ``durable_flush(mark)``: "is it on disk" for replies that promise it;
  raises ``StorageFullRefusal`` when a fire-and-forget write failed since the mark.
- ``is_allowed(runtime, peer)`` / ``is_admin(runtime, peer)``: the peer checks the server runs
  per connection against the running config (root and the daemon's own uid always pass; no
  allowed uids/gids configured lets anyone in).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from claykiln.actors.breaker_types import BreakerView
from claykiln.actors.errors import StorageFullRefusal
from claykiln.daemon import wiring
from claykiln.daemon.config.types import KilnConfig
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.runtime import Runtime
from claykiln.storage import StoreFull

__all__ = [
    "STATUS_SECTIONS",
    "breaker_keys",
    "breaker_view",
    "durable_flush",
    "freeze_heap",
    "health",
    "is_admin",
    "is_allowed",
    "limits_view",
    "process_stats",
    "status",
    "storage_mark",
]

StatusSection = Callable[[Runtime], object]


def limits_view(config: KilnConfig) -> dict[str, Any]:
    """The running protocol and connection limits, as ``hello`` reports them."""
    lim = config.daemon.limits
    return {
        "max_frame": lim.max_frame,
        "max_array_len": lim.max_array_len,
        "max_map_len": lim.max_map_len,
        "max_depth": lim.max_depth,
        "max_containers": lim.max_containers,
        "max_connections": lim.max_connections,
        "max_connections_per_uid": lim.max_connections_per_uid,
        "max_in_flight": lim.max_in_flight,
        "idle_timeout": lim.idle_timeout,
        "frame_timeout": lim.frame_timeout,
        "reply_timeout": lim.reply_timeout,
        "max_reply_backlog": lim.max_reply_backlog,
    }


def breaker_keys(runtime: Runtime) -> set[str]:
    """Every breaker key the config names or the board has seen."""
    return set(wiring.breaker_policies(runtime.config)) | set(runtime.breakers.snapshot)


def breaker_view(runtime: Runtime, name: str, view: BreakerView) -> dict[str, Any]:
    """``breaker.list``'s entry for ``name``; from ``view`` when the board has not published it."""
    for item in runtime.breakers.views():
        if item.get("key") == name:
            return item
    return {"key": name, "state": view.state.value}


def storage_mark(runtime: Runtime) -> int:
    """A mark to pass to ``durable_flush``: fire-and-forget failures so far."""
    return runtime.writer.stats().nowait_failed


async def durable_flush(runtime: Runtime, mark: int) -> None:
    """Wait until everything queued for storage so far is committed.

    Raises ``StorageFullRefusal`` when a fire-and-forget write failed since ``mark`` (the map
    is at its ceiling): the caller must not report "saved".
    """
    writer = runtime.writer
    try:
        await writer.write([])
    except StoreFull as exc:
        raise StorageFullRefusal(str(exc)) from exc
    if writer.stats().nowait_failed > mark:
        usage = runtime.store.usage()
        msg = (
            f"storage is full ({usage.used_bytes} of {usage.max_map_size} bytes used, or the "
            "disk under it is full; see storage.write_failed in the log): the change is in "
            "effect but was not saved; raise [daemon.storage].max_map_size or free disk space"
        )
        raise StorageFullRefusal(msg)


def health(runtime: Runtime) -> str:
    """``healthy``, ``degraded`` or ``unhealthy``: the health monitor's snapshot."""
    return runtime.health.snapshot.state.word


def storage_section(runtime: Runtime) -> dict[str, Any]:
    """The store's size and usage, and the writer's counters."""
    usage = runtime.store.usage()
    writer = runtime.writer.stats()
    return {
        "path": str(runtime.store.path),
        "map_size": usage.map_size,
        "max_map_size": usage.max_map_size,
        "used_bytes": usage.used_bytes,
        "ratio": round(usage.ratio, 4),
        "entries": dict(usage.entries),
        "transactions": writer.transactions,
        "writes": writer.asks,
        "failed": writer.failed,
        "map_grows": writer.map_grows,
    }


def outbox_section(runtime: Runtime) -> dict[str, Any]:
    """Jobs per state (pending, retry_wait, in_flight, dead, done: the DLQ size is ``dead``),
    the scheduler's counters, and the webhook sources held at Clay's lifetime cap."""
    out = runtime.scheduler.stats()
    out.update(runtime.outbox.stats())
    out["held_sources"] = runtime.scheduler.held_sources()
    out["dlq_degraded"] = runtime.config.daemon.outbox.dlq_degraded
    return out


def upstreams_section(runtime: Runtime) -> dict[str, Any]:
    """Per upstream: its pool's counters (answers, connect failures and timeouts are what the
    health monitor's reachability check reads), ``critical`` and the probe operation."""
    out: dict[str, Any] = {}
    for name, pool in runtime.pools.items():
        stats = pool.stats()
        up = runtime.config.upstreams.get(name)
        stats["critical"] = up is not None and up.critical
        stats["probe"] = up.probe.operation if up is not None and up.probe else None
        stats["probe_every"] = up.probe.every if up is not None and up.probe else None
        out[name] = stats
    return out


_frozen: list[int] = [0]  # objects frozen by freeze_heap (gc.get_freeze_count walks them all)

GC_THRESHOLD: Final = (20_000, 20, 20)
"""The collector's thresholds once the daemon serves (``gc.set_threshold``; Python's are
(700, 10, 10)). A generation is collected when the objects it gained since its last collection
pass the threshold: with Python's, a loaded daemon collected its youngest generation every ~20
calls and its oldest (every object made since start) every ~3,000; with these, almost never
under the bench's loads (the CPU this saves is in docs/performance.md). What it costs is memory:
garbage held in reference cycles lives until the next collection, up to 20,000 young objects
(a few MB)."""


def freeze_heap() -> int:
    """Collect, then move every object alive out of the collector's reach (``gc.freeze``) and
    remember how many there were, for ``process_stats``; returns that count. Then collect less
    often from here on (``GC_THRESHOLD``).

    ``gc.get_freeze_count()`` walks the whole frozen list (most of a ``status``'s cost when
    each request called it), so it is counted once, here.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    _frozen[0] = gc.get_freeze_count()
    return _frozen[0]


def process_stats() -> dict[str, Any]:
    """Memory, CPU and garbage-collector figures of this process (Linux /proc; 0 elsewhere).

    ``gc.frozen`` counts the objects moved out of the collector's reach at start-up
    (``freeze_heap``, called by ``Daemon.run``); ``gc.collections`` is per generation since
    start.
    """
    rss = 0
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    times = os.times()
    return {
        "rss_bytes": rss,
        "cpu_s": round(times.user + times.system, 3),
        "threads": threading.active_count(),
        "gc": {
            "frozen": _frozen[0],
            "collections": [generation["collections"] for generation in gc.get_stats()],
        },
    }


# One entry per component, in the order ``status`` shows them: a new actor adds its line here.
STATUS_SECTIONS: Final[tuple[tuple[str, StatusSection], ...]] = (
    ("checks", lambda runtime: runtime.health.wire()),
    ("server", lambda runtime: runtime.server.view()),
    ("storage", storage_section),
    ("actors", lambda runtime: dict(runtime.actors.states)),
    ("breakers", lambda runtime: runtime.breakers.stats()),
    ("gate", lambda runtime: runtime.gate.stats()),
    ("lanes", lambda runtime: runtime.lanes.stats()),
    ("idempotency", lambda runtime: runtime.idempotency.stats()),
    ("cache", lambda runtime: runtime.cache.stats()),
    ("outbox", lambda runtime: outbox_section(runtime)),
    ("upstreams", lambda runtime: upstreams_section(runtime)),
    ("process", lambda runtime: process_stats()),
)


def status(runtime: Runtime) -> dict[str, Any]:
    """``status``: the header, then every section of ``STATUS_SECTIONS``."""
    out: dict[str, Any] = {
        "version": runtime.version,
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - runtime.started_at, 3),
        "health": health(runtime),
        "config": runtime.config.source,
        "socket": str(runtime.socket),
    }
    for name, section in STATUS_SECTIONS:
        out[name] = section(runtime)
    return out


def is_allowed(runtime: Runtime, peer: PeerCred) -> bool:
    """May ``peer`` connect at all (``allowed_uids`` / ``allowed_gids``)?"""
    d = runtime.config.daemon
    if not d.allowed_uids and not d.allowed_gids:
        return True
    return (
        peer.uid in (0, os.geteuid())
        or peer.uid in d.allowed_uids
        or peer.in_groups(d.allowed_gids)
    )


def is_admin(runtime: Runtime, peer: PeerCred) -> bool:
    """May ``peer`` call admin methods (``admin_uids`` / ``admin_gids``)?"""
    d = runtime.config.daemon
    if peer.uid in (0, os.geteuid()):
        return True
    return peer.uid in d.admin_uids or peer.in_groups(d.admin_gids)
