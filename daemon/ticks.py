"""The stats tick: one map a second of what ``kiln top`` draws (docs/protocol.md, "tick").

``RuntimeTicks(runtime).build()`` assembles it from what the components already publish for
``status`` (lane, gate and breaker snapshots, pool counters, the outbox's counts per state) and
from the call path's figures (``actors/figures.py``). Rates, error rates and latency
percentiles are over the time since the previous ``build`` (the tick interval); counts are
totals since start, so a subscriber that lost ticks can still diff what it got. It reads and
never waits: no asks, no storage writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from claykiln.actors.figures import LatencyHistogram
from claykiln.daemon import views
from claykiln.daemon.config.types import KilnConfig
from claykiln.daemon.runtime import Runtime

__all__ = ["RuntimeTicks", "configured_gates"]

OUTBOX_STATES = ("pending", "retry_wait", "in_flight", "dead", "done")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _rate(now: int, then: int, elapsed: float) -> float:
    return round(max(now - then, 0) / elapsed, 2) if elapsed > 0 else 0.0


UNUSED_GATE: dict[str, Any] = {
    "paced": False,
    "per_second": None,
    "burst": None,
    "tokens": None,
    "closed": False,
    "closed_for": 0.0,
    "reason": None,
    "waiting": 0,
    "admitted": 0,
    "limited": 0,
}


def configured_gates(config: KilnConfig) -> list[str]:
    """Every gate the config names: each upstream's own, each ``[gates]`` entry, and every gate
    an operation uses."""
    names = (
        set(config.upstreams) | set(config.gates) | {op.gate for op in config.operations.values()}
    )
    return sorted(names)


class RuntimeTicks:
    """Builds ticks from a running daemon's ``Runtime``; remembers the last totals for rates."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self._clock = clock
        self.seq = 0
        self._at = clock()
        self._requests: dict[str, int] = {}  # upstream -> exchanges at the last build
        self._failures: dict[str, int] = {}
        self._latency: dict[str, LatencyHistogram] = {}
        self._rejected: dict[str, int] = {}  # lane -> rejections at the last build
        self._calls = 0
        self._server_requests = 0

    def build(self) -> dict[str, Any]:
        """The next tick (see docs/protocol.md for every key)."""
        runtime = self.runtime
        now = self._clock()
        elapsed = now - self._at
        self._at = now
        self.seq += 1
        calls = runtime.call_figures.total()
        server = runtime.server
        tick: dict[str, Any] = {
            "seq": self.seq,
            "time": time.time(),
            "interval": round(elapsed, 3),
            "pid": os.getpid(),
            "version": runtime.version,
            "uptime_s": round(time.monotonic() - runtime.started_at, 1),
            "health": views.health(runtime),
            "server": {
                "connections": server.connections,
                "requests": server.requests,
                "requests_per_s": _rate(server.requests, self._server_requests, elapsed),
            },
            "calls": {"total": calls, "per_s": _rate(calls, self._calls, elapsed)},
            "lanes": self._lanes(elapsed),
            "upstreams": self._upstreams(elapsed),
            "breakers": self._breakers(),
            "gates": self._gates(),
            "outbox": self._outbox(),
            "subscriptions": runtime.events.stats()["subscriptions"],
        }
        self._calls = calls
        self._server_requests = server.requests
        return tick

    def _lanes(self, elapsed: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, lane in self.runtime.lanes.stats()["lanes"].items():
            if lane.get("retired"):
                continue
            rejected = int(lane.get("rejected", 0))
            out[name] = {
                "active": lane["active"],
                "queued": lane["queued"],
                "concurrency": lane["concurrency"],
                "queue": lane["queue"],
                "admitted": lane.get("admitted", 0),
                "rejected": rejected,
                "rejected_per_s": _rate(rejected, self._rejected.get(name, rejected), elapsed),
                "timeouts": lane.get("timeouts", 0),
            }
            self._rejected[name] = rejected
        return out

    def _upstreams(self, elapsed: float) -> dict[str, Any]:
        figures = self.runtime.pipeline.exchanges
        out: dict[str, Any] = {}
        for name, pool in self.runtime.pools.items():
            stats = pool.stats()
            requests = figures.requests(name)
            failures = figures.failures.get(name, 0)
            histogram = figures.durations.get(name)
            before = self._latency.get(name)
            done = requests - self._requests.get(name, 0)
            failed = failures - self._failures.get(name, 0)
            out[name] = {
                "requests": requests,
                "requests_per_s": _rate(requests, self._requests.get(name, 0), elapsed),
                "error_rate": round(failed / done, 4) if done > 0 else None,
                "p50_ms": _ms(histogram.quantile(0.5, before)) if histogram else None,
                "p99_ms": _ms(histogram.quantile(0.99, before)) if histogram else None,
                "connections": stats["in_use"] + stats["idle"],
                "in_use": stats["in_use"],
                "max_connections": stats["max_connections"],
            }
            self._requests[name] = requests
            self._failures[name] = failures
            if histogram is not None:
                self._latency[name] = histogram.copy()
        return out

    def _breakers(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for view in self.runtime.breakers.views():
            retry_after = view.get("retry_after")
            out[view["key"]] = {
                "state": view["state"],
                "forced": view.get("forced", False),
                "retry_after": None if retry_after is None else round(retry_after, 3),
                "error_rate": view.get("error_rate"),
            }
        return out

    def _gates(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen = self.runtime.gate.stats()["upstreams"]
        for name in configured_gates(self.runtime.config):
            if name not in seen:  # a gate nobody used yet: unpaced, open
                out[name] = dict(UNUSED_GATE)
        for name, gate in seen.items():
            tokens = gate.get("tokens")
            out[name] = {
                "paced": gate.get("paced", False),
                "per_second": gate.get("per_second"),
                "burst": gate.get("burst"),
                "tokens": None if tokens is None else round(tokens, 2),
                "closed": gate.get("closed", False),
                "closed_for": round(gate.get("closed_for") or 0.0, 3),
                "reason": gate.get("reason"),
                "waiting": gate.get("waiting", 0),
                "admitted": gate.get("admitted", 0),
                "limited": gate.get("limited", 0),
            }
        return dict(sorted(out.items()))

    def _outbox(self) -> dict[str, Any]:
        counts = self.runtime.jobs.counts()
        return {state: int(counts.get(state, 0)) for state in OUTBOX_STATES}
