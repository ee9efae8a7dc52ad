"""What a running daemon shows: the read-side views the RPC methods and the server call.

``DaemonViews`` is a mixin of ``Daemon`` (``app.py``); it owns nothing and starts nothing. It
reads the daemon's actors and storage and promises:
- ``status()`` / ``health()``: a snapshot of the server, storage, actors, breakers, gate, lanes
  and upstream pools; health is ``unhealthy`` when an actor is not running or storage is >= 95 %
  full, ``degraded`` when a breaker is open or storage is >= 80 % full, else ``healthy``.
- ``limits_view()``: the running protocol and connection limits (restart-only, computed once).
- ``breaker_keys()`` / ``breaker_view()``: what ``breaker.force`` checks and answers with.
- ``storage_mark()`` / ``durable_flush(mark)``: "is it on disk" for replies that promise it;
  raises ``StorageFullRefusal`` when a fire-and-forget write failed since the mark.
- ``is_allowed(peer)`` / ``is_admin(peer)``: the peer checks the server runs per connection
  (root and the daemon's own uid always pass; no allowed uids/gids configured lets anyone in).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from claykiln.actors.errors import StorageFullRefusal
from claykiln.daemon import wiring
from claykiln.storage import StoreFull

if TYPE_CHECKING:
    from pathlib import Path

    from claykiln.actors.breaker import BreakerBoard
    from claykiln.actors.gate import GateBoard
    from claykiln.actors.lanes import Lanes
    from claykiln.actors.upstream import UpstreamPool
    from claykiln.daemon.config.types import KilnConfig
    from claykiln.daemon.rpc.listener import PeerCred
    from claykiln.daemon.rpc.server import Server
    from claykiln.storage import Store
from claykiln.actors.writer import Writer

__all__ = ["DaemonViews"]


class DaemonViews:
    """Read-side views over a running daemon; the host class sets the attributes below."""

    config: KilnConfig
    version: str
    started_at: float
    serving_socket: Path
    actors: dict[str, str]
    _limits_view: dict[str, Any] | None
    # Set once the daemon has started (``Daemon._start``); the views are called only after.
    store: Store
    writer: Writer
    breakers: BreakerBoard
    gate: GateBoard
    lanes: Lanes
    pools: dict[str, UpstreamPool]
    server: Server

    def limits_view(self) -> dict[str, Any]:
        """The running limits (restart-only, so computed once; callers must not mutate it)."""
        if self._limits_view is not None:
            return self._limits_view
        lim = self.config.daemon.limits
        self._limits_view = {
            "max_frame": lim.max_frame,
            "max_array_len": lim.max_array_len,
            "max_map_len": lim.max_map_len,
            "max_depth": lim.max_depth,
            "max_connections": lim.max_connections,
            "max_in_flight": lim.max_in_flight,
            "idle_timeout": lim.idle_timeout,
        }
        return self._limits_view

    def breaker_keys(self) -> set[str]:
        return set(wiring.breaker_policies(self.config)) | set(self.breakers.snapshot)

    def breaker_view(self, name: str, view: Any) -> dict[str, Any]:
        for item in self.breakers.views():
            if item.get("key") == name:
                return item
        return {"key": name, "state": getattr(getattr(view, "state", None), "value", str(view))}

    def storage_mark(self) -> int:
        """A mark to pass to ``durable_flush``: fire-and-forget failures so far."""
        return self.writer.stats().nowait_failed

    async def durable_flush(self, mark: int) -> None:
        """Wait until everything queued for storage so far is committed.

        Raises ``StorageFullRefusal`` when a fire-and-forget write failed since ``mark`` (the map
        is at its ceiling): the caller must not report "saved".
        """
        try:
            await self.writer.write([])
        except StoreFull as exc:
            raise StorageFullRefusal(str(exc)) from exc
        if self.writer.stats().nowait_failed > mark:
            usage = self.store.usage()
            msg = (
                f"storage is full ({usage.used_bytes} of {usage.max_map_size} bytes used, or the "
                "disk under it is full; see storage.write_failed in the log): the change is in "
                "effect but was not saved; raise [daemon.storage].max_map_size or free disk space"
            )
            raise StorageFullRefusal(msg)

    def health(self) -> str:
        usage = self.store.usage()
        if any(state != "running" for state in self.actors.values()):
            return "unhealthy"
        if usage.ratio >= 0.95:
            return "unhealthy"
        if self.breakers.stats().get("open", 0) or usage.ratio >= 0.8:
            return "degraded"
        return "healthy"

    def status(self) -> dict[str, Any]:
        usage = self.store.usage()
        writer = self.writer.stats()
        return {
            "version": self.version,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "health": self.health(),
            "config": self.config.source,
            "socket": str(self.serving_socket),
            "server": self.server.stats(),
            "storage": {
                "path": str(self.store.path),
                "map_size": usage.map_size,
                "max_map_size": usage.max_map_size,
                "used_bytes": usage.used_bytes,
                "ratio": round(usage.ratio, 4),
                "entries": dict(usage.entries),
                "transactions": writer.transactions,
                "writes": writer.asks,
                "failed": writer.failed,
                "map_grows": writer.map_grows,
            },
            "actors": dict(self.actors),
            "breakers": self.breakers.stats(),
            "gate": self.gate.stats(),
            "lanes": self.lanes.stats(),
            "upstreams": {name: pool.stats() for name, pool in self.pools.items()},
            "process": process_stats(),
        }

    def is_allowed(self, peer: PeerCred) -> bool:
        d = self.config.daemon
        if not d.allowed_uids and not d.allowed_gids:
            return True
        return (
            peer.uid in (0, os.geteuid())
            or peer.uid in d.allowed_uids
            or peer.in_groups(d.allowed_gids)
        )

    def is_admin(self, peer: PeerCred) -> bool:
        d = self.config.daemon
        if peer.uid in (0, os.geteuid()):
            return True
        return peer.uid in d.admin_uids or peer.in_groups(d.admin_gids)


def process_stats() -> dict[str, Any]:
    """Memory, CPU and garbage-collector figures of this process (Linux /proc; 0 elsewhere).

    ``gc.frozen`` counts the objects moved out of the collector's reach at start-up
    (``gc.freeze()``, see Daemon.run); ``gc.collections`` is per generation since start.
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
            "frozen": gc.get_freeze_count(),
            "collections": [generation["collections"] for generation in gc.get_stats()],
        },
    }
