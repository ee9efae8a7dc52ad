"""``[daemon.health]``: the health monitor's windows and thresholds (docs/configuration.md).
Part of :func:`claykiln.daemon.config.build.build_config`.

    [daemon.health]
    interval = "1s"            how often every check is read
    hold = "30s"               a check gets better only after the better reading held this long
    window = "60s"             connect failures, timeouts and failed writes are counted over it
    min_failures = 2           failures in the window (and no answer) to call an upstream down
    lane_window = "30s"        a lane saturated this long makes the daemon degraded
    storage_degraded = 0.8     store usage (of its ceiling) that makes it degraded
    storage_unhealthy = 0.95   ... and unhealthy
    liveness_timeout = "10s"   an actor silent to a liveness ask this long makes it unhealthy
    writer_stall = "30s"       the writer committing nothing this long, writes queued: unhealthy

Every key may be left out. ``[upstreams.NAME] critical`` and ``probe`` (breakers.py) say how an
upstream is watched; ``[daemon.outbox] dlq_degraded`` is the dead-letter threshold.
"""

from __future__ import annotations

from claykiln.actors.health_inputs import HealthPolicy
from claykiln.daemon.config.schema import Table, duration, integer, number

__all__ = ["read_health"]


def read_health(t: Table) -> HealthPolicy:
    """``[daemon.health]``; invalid keys are reported and take their defaults."""
    d = HealthPolicy()
    degraded = t.get("storage_degraded", number(0, 1, example=0.8), d.storage_degraded)
    unhealthy = t.get("storage_unhealthy", number(0, 1, example=0.95), d.storage_unhealthy)
    if unhealthy < degraded and not {"storage_degraded", "storage_unhealthy"} & t.invalid:
        why = f"must be at least storage_degraded ({degraded:g})"
        t.problems.bad_value(t.sub_path("storage_unhealthy"), unhealthy, why)
        degraded, unhealthy = d.storage_degraded, d.storage_unhealthy
    policy = HealthPolicy(
        interval=t.get("interval", duration(example="1s"), d.interval),
        hold=t.get("hold", duration(example="30s", allow_zero=True), d.hold),
        window=t.get("window", duration(example="60s"), d.window),
        min_failures=t.get("min_failures", integer(1, example=2), d.min_failures),
        lane_window=t.get("lane_window", duration(example="30s", allow_zero=True), d.lane_window),
        storage_degraded=degraded,
        storage_unhealthy=unhealthy,
        liveness_timeout=t.get("liveness_timeout", duration(example="10s"), d.liveness_timeout),
        writer_stall=t.get("writer_stall", duration(example="30s"), d.writer_stall),
    )
    t.finish()
    return policy
