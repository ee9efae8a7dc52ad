"""The daemon's figures in the Prometheus text format (docs/operations.md, "Metrics").

``render_metrics(runtime)`` is what ``kiln metrics`` prints (the ``metrics`` method) and what
``[daemon] metrics_textfile`` holds (``daemon/metrics_textfile.py``). It is produced by
prometheus_client's exposition code from a custom collector that reads the snapshots and
counters the components already keep for ``status`` and the call path's figures
(``actors/figures.py``): nothing on the request path pays for metrics beyond a dict increment.

Conventions: every name starts with ``claykiln_``; counters end in ``_total`` and only go up
for the life of the process, a reload included (``Runtime.metric_counters`` continues a
counter whose source restarted); durations are ``_seconds`` histograms; states are gauges with
a ``state`` label, 1 for the current one; ``claykiln_info{version}`` is always 1. Label values
come from the config (operations, upstreams, lanes, gates, breakers) and fixed sets, so the
number of series is bounded; a ``call`` naming no configured operation counts under
``operation="(unknown)"``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from claykiln.actors.breaker_types import BreakerState
from claykiln.actors.figures import LatencyHistogram
from claykiln.daemon import views
from claykiln.daemon.runtime import Runtime

__all__ = ["CONTENT_TYPE", "HEALTH_STATES", "RuntimeCollector", "parse_metrics", "render_metrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
HEALTH_STATES: Final = ("healthy", "degraded", "unhealthy")
BREAKER_STATES: Final = tuple(state.value for state in BreakerState)
OUTBOX_STATES: Final = ("pending", "retry_wait", "in_flight", "dead", "done")
LANE_COUNTERS: Final = (
    ("admitted", "admitted"),
    ("rejected", "rejected"),
    ("timeouts", "timeouts"),
)
JOB_EVENTS: Final = ("started", "done", "retried", "deferred", "dead", "swept")


def _buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    return [
        ("+Inf" if bound == float("inf") else repr(bound), float(count))
        for bound, count in histogram.cumulative()
    ]


class RuntimeCollector(Collector):
    """A prometheus_client collector over a running daemon's ``Runtime`` (read-only)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._added: dict[str, set[tuple[str, ...]]] = {}  # family -> label values this round

    def _counter(self, family: CounterMetricFamily, labels: list[str], raw: float) -> None:
        """Add a sample to ``family`` that never goes down (``MonotonicCounters``)."""
        key = (family.name, *labels)
        self._added.setdefault(family.name, set()).add(tuple(labels))
        family.add_metric(labels, self.runtime.metric_counters.value(key, raw))

    def _finish(self, family: Metric) -> Metric:
        """A counter keeps the series it had even when their source is gone this round (a
        reload rebuilt it): they stay at the total they reached."""
        if isinstance(family, CounterMetricFamily):
            added = self._added.pop(family.name, set())
            counters = self.runtime.metric_counters
            for key in counters.keys_of(family.name):
                if key[1:] not in added:
                    family.add_metric(list(key[1:]), counters.value(key, 0))
        return family

    def collect(self) -> Iterable[Metric]:
        for part in (
            self._process,
            self._calls,
            self._upstreams,
            self._breakers,
            self._gates,
            self._lanes,
            self._outbox,
            self._server,
        ):
            for family in part():
                yield self._finish(family)

    def _process(self) -> Iterator[Metric]:
        runtime = self.runtime
        info = InfoMetricFamily("claykiln", "The running daemon's version.", labels=["version"])
        info.add_metric([runtime.version], {})
        yield info
        started = time.time() - (time.monotonic() - runtime.started_at)
        yield GaugeMetricFamily(
            "claykiln_start_time_seconds",
            "When the daemon process started (Unix time).",
            value=round(started, 3),
        )
        health = views.health(runtime)
        family = GaugeMetricFamily(
            "claykiln_health", "The daemon's health: 1 for the current state.", labels=["state"]
        )
        for state in HEALTH_STATES:
            family.add_metric([state], 1.0 if state == health else 0.0)
        yield family
        actors = GaugeMetricFamily("claykiln_actor_up", "1 while the actor runs.", labels=["actor"])
        for name, state in sorted(runtime.actors.states.items()):
            actors.add_metric([name], 1.0 if state == "running" else 0.0)
        yield actors

    def _calls(self) -> Iterator[Metric]:
        figures = self.runtime.call_figures
        calls = CounterMetricFamily(
            "claykiln_calls",
            "call requests answered, by operation and outcome (ok, client_error, replayed, "
            "fallback, or the error code).",
            labels=["operation", "outcome"],
        )
        for (operation, outcome), count in sorted(figures.outcomes.items()):
            self._counter(calls, [operation, outcome], count)
        yield calls
        durations = HistogramMetricFamily(
            "claykiln_call_duration_seconds",
            "Seconds from a call request to its answer, by operation.",
            labels=["operation"],
        )
        for operation, histogram in sorted(figures.durations.items()):
            durations.add_metric([operation], _buckets(histogram), histogram.sum)
        yield durations

    def _upstreams(self) -> Iterator[Metric]:
        runtime = self.runtime
        figures = runtime.pipeline.exchanges
        requests = CounterMetricFamily(
            "claykiln_upstream_requests",
            "HTTP exchanges with an upstream, by outcome (2xx..5xx, 429, timeout, "
            "connect_error, transport_error).",
            labels=["upstream", "outcome"],
        )
        failures = CounterMetricFamily(
            "claykiln_upstream_failures",
            "HTTP exchanges the breaker counts as failures (5xx, 408, timeouts, connection "
            "errors).",
            labels=["upstream"],
        )
        durations = HistogramMetricFamily(
            "claykiln_upstream_request_duration_seconds",
            "Seconds per HTTP exchange with an upstream (after the gate token).",
            labels=["upstream"],
        )
        for upstream, outcomes in sorted(figures.outcomes.items()):
            for outcome, count in sorted(outcomes.items()):
                self._counter(requests, [upstream, outcome], count)
            self._counter(failures, [upstream], figures.failures.get(upstream, 0))
            histogram = figures.durations[upstream]
            durations.add_metric([upstream], _buckets(histogram), histogram.sum)
        connections = GaugeMetricFamily(
            "claykiln_upstream_connections",
            "Open connections to an upstream, by state (in_use, idle).",
            labels=["upstream", "state"],
        )
        for name, pool in sorted(runtime.pools.items()):
            stats = pool.stats()
            connections.add_metric([name, "in_use"], stats["in_use"])
            connections.add_metric([name, "idle"], stats["idle"])
        yield from (requests, failures, durations, connections)

    def _breakers(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "claykiln_breaker_state",
            "A circuit breaker's state: 1 for the current one.",
            labels=["breaker", "state"],
        )
        retry = GaugeMetricFamily(
            "claykiln_breaker_retry_after_seconds",
            "Seconds until an open breaker lets a probe through (0 when not open).",
            labels=["breaker"],
        )
        for view in self.runtime.breakers.views():
            for name in BREAKER_STATES:
                state.add_metric([view["key"], name], 1.0 if view["state"] == name else 0.0)
            retry.add_metric([view["key"]], float(view.get("retry_after") or 0.0))
        yield from (state, retry)

    def _gates(self) -> Iterator[Metric]:
        tokens = GaugeMetricFamily(
            "claykiln_gate_tokens", "Tokens in a paced gate's bucket.", labels=["gate"]
        )
        closed = GaugeMetricFamily(
            "claykiln_gate_closed_seconds",
            "Seconds a gate stays closed by a Retry-After (0: open).",
            labels=["gate"],
        )
        waiting = GaugeMetricFamily(
            "claykiln_gate_waiting", "Calls waiting for a gate token.", labels=["gate"]
        )
        admitted = CounterMetricFamily(
            "claykiln_gate_admitted", "Tokens a gate handed out.", labels=["gate"]
        )
        limited = CounterMetricFamily(
            "claykiln_gate_limited", "Calls a gate refused (rate_limited).", labels=["gate"]
        )
        for name, gate in sorted(self.runtime.gate.stats()["upstreams"].items()):
            if gate.get("tokens") is not None:
                tokens.add_metric([name], float(gate["tokens"]))
            closed.add_metric([name], float(gate.get("closed_for") or 0.0))
            waiting.add_metric([name], gate.get("waiting", 0))
            self._counter(admitted, [name], gate.get("admitted", 0))
            self._counter(limited, [name], gate.get("limited", 0))
        yield from (tokens, closed, waiting, admitted, limited)

    def _lanes(self) -> Iterator[Metric]:
        gauges = {
            key: GaugeMetricFamily(f"claykiln_lane_{key}", doc, labels=["lane"])
            for key, doc in (
                ("active", "Calls holding a lane slot."),
                ("queued", "Calls queued for a lane slot."),
                ("concurrency", "A lane's slots."),
            )
        }
        counters = {
            key: CounterMetricFamily(f"claykiln_lane_{key}", doc, labels=["lane"])
            for key, doc in LANE_COUNTERS
        }
        for lane, stats in sorted(self.runtime.lanes.stats()["lanes"].items()):
            if stats.get("retired"):
                continue
            for key, gauge in gauges.items():
                gauge.add_metric([lane], stats.get(key, 0))
            for key, counter in counters.items():
                self._counter(counter, [lane], stats.get(key, 0))
        yield from gauges.values()
        yield from counters.values()

    def _outbox(self) -> Iterator[Metric]:
        runtime = self.runtime
        counts = runtime.jobs.counts()
        jobs = GaugeMetricFamily(
            "claykiln_outbox_jobs",
            "Jobs in the durable outbox, by state (dead: the dead-letter queue).",
            labels=["state"],
        )
        for state in OUTBOX_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "claykiln_dlq_jobs", "Jobs in the dead-letter queue.", value=counts.get("dead", 0)
        )
        events = CounterMetricFamily(
            "claykiln_outbox_job_events",
            "Outbox job transitions since start (started, done, retried, deferred, dead, swept).",
            labels=["event"],
        )
        since = runtime.scheduler.stats().get("since_start", {})
        for event in JOB_EVENTS:
            self._counter(events, [event], since.get(event, 0))
        yield events

    def _server(self) -> Iterator[Metric]:
        runtime = self.runtime
        server = runtime.server
        yield GaugeMetricFamily(
            "claykiln_connections", "Open client connections.", value=server.connections
        )
        for name, doc, raw in (
            ("claykiln_rpc_requests", "RPC requests received.", server.requests),
            ("claykiln_protocol_errors", "Malformed client frames.", server.protocol_errors),
            (
                "claykiln_idempotency_replays",
                "Calls answered from a stored result.",
                runtime.idempotency.stats().get("replayed", 0),
            ),
            (
                "claykiln_fallback_answers",
                "Calls answered from the fallback cache.",
                runtime.cache.stats().get("served", 0),
            ),
            (
                "claykiln_notifications_dropped",
                "Subscriber notifications lost (slow readers).",
                runtime.events.stats()["dropped"],
            ),
        ):
            counter = CounterMetricFamily(name, doc)
            self._counter(counter, [], raw)
            yield counter
        yield GaugeMetricFamily(
            "claykiln_subscriptions",
            "Open subscriptions (subscribe).",
            value=runtime.events.stats()["subscriptions"],
        )
        usage = runtime.store.usage()
        for name, doc, value in (
            ("claykiln_storage_used_bytes", "Bytes used in the LMDB map.", usage.used_bytes),
            ("claykiln_storage_map_bytes", "The LMDB map's current size.", usage.map_size),
            ("claykiln_storage_max_bytes", "The size the map may grow to.", usage.max_map_size),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


def render_metrics(runtime: Runtime) -> bytes:
    """Every metric of ``runtime`` in the Prometheus text format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return generate_latest(registry)


def parse_metrics(text: str) -> dict[str, Any]:
    """``{name: [(labels, value)]}`` from text in the Prometheus format (tests, ``kiln metrics
    --json``), parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out
