"""Circuit breaker (stub: settings only; the actor is being written)."""

from __future__ import annotations

import attrs


@attrs.frozen
class BreakerPolicy:
    """When a breaker opens and how it recovers. Durations are seconds."""

    error_threshold: float = 0.5
    volume_threshold: int = 10
    window: float = 10.0
    buckets: int = 10
    slow_call_duration: float | None = None
    slow_call_threshold: float = 1.0
    reset_timeout: float = 30.0
    half_open_probes: int = 1
    probe_timeout: float = 60.0
