"""What the health monitor (``actors/health.py``) reads and how it is set, as plain values.

- ``HealthPolicy`` (``[daemon.health]``), ``UpstreamWatch`` (``[upstreams.NAME] critical`` and
  ``probe``) and ``HealthSettings``: the running config's part, read at every evaluation.
- ``HealthInputs``: the callables it reads its inputs through (snapshots and counters, never
  an ask), with the readings they answer (``StorageReading``, ``WriterReading``,
  ``UpstreamTraffic``); tests drive any input through them.
- ``AuthWatch`` and ``ProbeResult``: what the call path (``actors/pipeline.py``) tells the
  monitor about credentials and answers to an active probe.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Set
from typing import Protocol

import attrs

from claykiln.actors.health_checks import LaneSample

__all__ = [
    "AuthWatch",
    "HealthInputs",
    "HealthPolicy",
    "HealthSettings",
    "ProbeResult",
    "StorageReading",
    "UpstreamTraffic",
    "UpstreamWatch",
    "WriterReading",
]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        msg = f"{attribute.name} must be > 0, got {value}"
        raise ValueError(msg)


@attrs.frozen
class HealthPolicy:
    """``[daemon.health]`` (docs/configuration.md): seconds, ratios and counts."""

    interval: float = attrs.field(default=1.0, validator=_positive)
    hold: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    window: float = attrs.field(default=60.0, validator=_positive)
    min_failures: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    lane_window: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    storage_degraded: float = attrs.field(default=0.8, validator=_positive)
    storage_unhealthy: float = attrs.field(default=0.95, validator=_positive)
    liveness_timeout: float = attrs.field(default=10.0, validator=_positive)
    writer_stall: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen
class UpstreamWatch:
    """How one upstream is watched: ``critical`` (unreachable makes the daemon unhealthy) and
    its active probe (an operation without parameters, every ``probe_every`` seconds)."""

    critical: bool = False
    probe_operation: str | None = None
    probe_every: float | None = None


@attrs.frozen
class HealthSettings:
    """Everything the monitor reads from the running config (read again at every evaluation,
    so a reload applies at the next one). ``credentials``: operation -> (credential name,
    upstream) for operations that send one; ``credentials_dir`` names where the files live."""

    policy: HealthPolicy = attrs.field(factory=HealthPolicy)
    upstreams: Mapping[str, UpstreamWatch] = attrs.field(factory=dict)
    credentials: Mapping[str, tuple[str, str]] = attrs.field(factory=dict)
    credentials_dir: str = ""
    dlq_degraded: int = 100


@attrs.frozen
class StorageReading:
    """The store's pages in use and the ceiling it can grow to (``disk_bound``: the disk's free
    space, not ``max_map_size``, is the limit)."""

    used: int
    ceiling: int
    disk_bound: bool = False


@attrs.frozen
class WriterReading:
    """The storage writer's cumulative counters and its queue."""

    transactions: int
    failed: int
    queued: int


@attrs.frozen
class UpstreamTraffic:
    """One upstream pool's cumulative counters: HTTP answers, connect failures and timeouts."""

    answers: int
    failures: int


@attrs.frozen
class HealthInputs:
    """Where the monitor reads: plain callables (cheap, no asks), so tests can drive any
    input. ``pingables``: the actors asked for liveness (an awaitable that returns once the
    actor answers). ``probe``: one active probe of an operation. ``credential``: a
    fingerprint of a credential's current value (None: the file is missing)."""

    actors: Callable[[], Mapping[str, str]]
    pingables: Callable[[], Mapping[str, Callable[[], Awaitable[None]]]]
    storage: Callable[[], StorageReading]
    writer: Callable[[], WriterReading]
    breakers: Callable[[], Mapping[str, str]]
    dead_jobs: Callable[[], int]
    lanes: Callable[[], Mapping[str, LaneSample]]
    traffic: Callable[[], Mapping[str, UpstreamTraffic]]
    probe: Callable[[str], Awaitable[ProbeResult]]
    credential: Callable[[str], str | None]


# -- what the call path tells or answers ------------------------------------------------------


class AuthWatch(Protocol):
    """Who hears what upstreams say of credentials (the health monitor); never blocks."""

    @property
    def suspects(self) -> Set[str]:
        """Operations whose credential was last refused: their next answers are told too."""
        ...

    def auth_answered(self, operation: str, status: int) -> None:
        """An answer to ``operation``: 401/403, or any status for a suspect."""
        ...


@attrs.frozen
class ProbeResult:
    """One active probe (``CallPipeline.probe``): ``reached`` True (an HTTP answer,
    ``status``), False (a connect failure or a timeout: ``error``), or None (nothing learned:
    the gate held it back, the daemon is stopping...)."""

    reached: bool | None
    status: int | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.reached:
            return f"answered {self.status}"
        if self.reached is False:
            return f"failed ({self.error})"
        return f"nothing learned ({self.error})"
