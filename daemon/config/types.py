"""The validated configuration (CONTRACT: docs/configuration.md): frozen attrs classes.

Built only by :func:`claykiln.daemon.config.load_config`, which has already checked every value
and cross-reference, so consumers can trust them: durations are float seconds, sizes int bytes,
every operation's upstream, lane and gate exist, its timeout and gate are resolved. Mappings are
plain dicts typed read-only; treat a config as an immutable snapshot (a reload builds a new one).
The actor settings (BreakerPolicy, RatePolicy, LanePolicy, RetryPolicy, TimeoutClasses) are the
actors' own classes, built by keyword from TOML keys of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs

from claykiln.actors.breaker import BreakerPolicy
from claykiln.actors.fallback import CacheBounds
from claykiln.actors.fallback_policy import CachePolicy
from claykiln.actors.gate import RatePolicy
from claykiln.actors.health_inputs import HealthPolicy
from claykiln.actors.jobs_policy import WebhookRules
from claykiln.actors.lanes import LanePolicy
from claykiln.actors.retry import RetryPolicy
from claykiln.actors.upstream import TimeoutClasses
from claykiln.daemon.config.outbox import OutboxConfig, OutboxKeys
from claykiln.daemon.config.schema import ConfigError, check_base_url

__all__ = [
    "AuthConfig",
    "BreakerScope",
    "DaemonConfig",
    "IdempotencyMode",
    "KilnConfig",
    "LimitsConfig",
    "LogFormat",
    "LogLevel",
    "OnFailure",
    "OperationConfig",
    "ProbeConfig",
    "StorageConfig",
    "UpstreamConfig",
]

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
OnFailure = Literal["error", "fallback", "dlq"]
IdempotencyMode = Literal["required", "derive", "off"]
BreakerScope = str  # "upstream", "operation" or a [breakers] name


@attrs.frozen
class LimitsConfig:
    """What one client may send and hold (``[daemon.limits]``); durations in seconds, sizes in
    bytes. ``status_max_age``: a ``status`` answer is computed at most once per this interval
    and shared (0: every request computes its own). ``share_window``: each peer's work on the
    loop is counted over this window for its fair share of a busy daemon (0: shares off).
    ``busy_poll``: after serving a request, the loop polls for the next one without sleeping
    for this long (0: off; lower latency at high rates for up to a core of CPU)."""

    max_frame: int = 1024 * 1024
    max_array_len: int = 10_000
    max_map_len: int = 10_000
    max_depth: int = 32
    max_containers: int = 25_000
    max_connections: int = 256
    max_connections_per_uid: int = 128
    max_in_flight: int = 128
    idle_timeout: float = 300.0
    frame_timeout: float = 10.0
    reply_timeout: float = 30.0
    max_reply_backlog: int = 4 * 1024 * 1024
    status_max_age: float = 0.1
    share_window: float = 1.0
    busy_poll: float = 0.0


@attrs.frozen
class StorageConfig:
    """The LMDB environment: initial map size, the ceiling it may grow to, fsync on commit."""

    map_size: int = 64 * 1024 * 1024
    max_map_size: int = 4 * 1024 * 1024 * 1024
    sync: bool = True


@attrs.frozen
class DaemonConfig:
    """The process: where it listens and keeps state, who may talk to it, logging, limits.

    Paths are absolute or relative to the working directory (relative ones in a config file were
    resolved against the file's directory). Empty ``allowed_*``: the socket's file mode decides;
    empty ``admin_*``: root and the daemon's own uid only.
    """

    socket: Path
    state_dir: Path
    credentials_dir: Path
    log_format: LogFormat = "auto"
    log_level: LogLevel = "info"
    socket_mode: int = 0o660
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()
    admin_uids: tuple[int, ...] = ()
    admin_gids: tuple[int, ...] = ()
    grace_period: float = 20.0
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    storage: StorageConfig = attrs.field(factory=StorageConfig)
    cache: CacheBounds = attrs.field(factory=CacheBounds)
    outbox: OutboxConfig = attrs.field(factory=OutboxConfig)
    # Monitoring (daemon/config/monitor.py): the subscribe tick, the Prometheus textfile.
    tick_interval: float = 1.0
    metrics_textfile: Path | None = None
    metrics_interval: float = 5.0
    health: HealthPolicy = attrs.field(factory=HealthPolicy)  # [daemon.health]


@attrs.frozen
class AuthConfig:
    """Send header ``header`` with the value of credential file ``credential``."""

    header: str
    credential: str


@attrs.frozen
class ProbeConfig:
    """``[upstreams.NAME] probe``: the operation a half-open breaker of it is tested with, and
    how often the health monitor probes the upstream (seconds; None: not set)."""

    operation: str
    every: float | None = None


@attrs.frozen
class UpstreamConfig:
    """One HTTP API. ``base_url`` has no trailing slash; ``rate`` None means no pacing."""

    name: str
    base_url: str
    auth: AuthConfig | None = None
    rate: RatePolicy | None = None
    breaker: BreakerPolicy = attrs.field(factory=BreakerPolicy)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    timeouts: TimeoutClasses = attrs.field(factory=TimeoutClasses)
    max_connections: int = 64
    headers: Mapping[str, str] = attrs.field(factory=dict)
    http_client: str = "h11"
    probe: ProbeConfig | None = None
    critical: bool = False  # unreachable makes the daemon unhealthy (else degraded)


@attrs.frozen
class OperationConfig:
    """One named call a client may make: ``method`` ``upstream.base_url + path``.

    ``timeout`` is seconds, resolved from ``timeout_class`` (a TimeoutClasses field name of the
    upstream) or ``"custom"`` when the config gave a duration. ``path_params`` are the
    ``{placeholders}`` of ``path`` in order of first appearance. ``auth`` None means the
    upstream's auth (see :meth:`KilnConfig.auth_for`); ``headers`` add to (and override) the
    upstream's. ``repeat_safe``: may the call be retried after it may have reached the upstream.
    ``gate``: the rate gate that paces the call and that its 429/503 Retry-After closes, an
    upstream name (that upstream's ``rate``) or a ``[gates]`` name; the upstream's by default.
    """

    name: str
    upstream: str
    method: str
    path: str
    lane: str
    timeout: float
    timeout_class: str
    on_failure: OnFailure = "error"
    repeat_safe: bool = False
    idempotent: bool = False
    cacheable: bool = False
    idempotency: IdempotencyMode = "off"
    idempotency_retention: float = 86_400.0
    key_field: str | None = None
    cache: CachePolicy | None = None
    outbox: OutboxKeys = attrs.field(factory=OutboxKeys)  # submit's jobs: attempts, backoff, lane
    webhook: WebhookRules | None = None  # Clay's table webhook rules (row size, lifetime cap)
    breaker: BreakerScope = "upstream"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    auth: AuthConfig | None = None
    path_params: tuple[str, ...] = ()
    gate: str = attrs.field()

    @gate.default
    def _gate_default(self) -> str:
        return self.upstream


@attrs.frozen
class KilnConfig:
    """The whole configuration; ``source`` is the file path or ``"<embedded default>"``.

    ``gates`` holds the ``[gates]`` section: a rate gate per name, ``None`` for one that only
    honours Retry-After closures (no pacing). The gate named after an upstream is that
    upstream's ``rate``, which is never repeated here (a gate may not share an upstream's name).
    ``breakers`` holds the ``[breakers]`` section, each policy resolved over the breaker of the
    upstream whose operations name it (see ``breaker_key``).
    """

    daemon: DaemonConfig
    upstreams: Mapping[str, UpstreamConfig]
    lanes: Mapping[str, LanePolicy]
    operations: Mapping[str, OperationConfig]
    source: str
    gates: Mapping[str, RatePolicy | None] = attrs.field(factory=dict)
    breakers: Mapping[str, BreakerPolicy] = attrs.field(factory=dict)

    def breaker_key(self, operation: OperationConfig) -> str:
        """The key of the breaker an operation reports to: its upstream's name, ``upstream/op``
        for ``breaker = "operation"``, or the ``[breakers]`` name it gives."""
        if operation.breaker == "upstream":
            return operation.upstream
        if operation.breaker == "operation":
            return f"{operation.upstream}/{operation.name}"
        return operation.breaker

    def gate_policy(self, gate: str) -> RatePolicy | None:
        """The pacing of gate ``gate`` (an upstream's ``rate`` or a ``[gates]`` entry); None:
        closures only, or no such gate."""
        if gate in self.upstreams:
            return self.upstreams[gate].rate
        return self.gates.get(gate)

    def auth_for(self, operation: OperationConfig) -> AuthConfig | None:
        """The auth an operation uses: its own override, else its upstream's (None: no auth)."""
        if operation.auth is not None:
            return operation.auth
        return self.upstreams[operation.upstream].auth

    def credential_names(self) -> frozenset[str]:
        """Every credential any upstream or operation refers to (what to load at start/reload)."""
        names = {u.auth.credential for u in self.upstreams.values() if u.auth is not None}
        names |= {o.auth.credential for o in self.operations.values() if o.auth is not None}
        return frozenset(names)

    def with_base_url(self, upstream: str, url: str) -> KilnConfig:
        """A copy with ``upstream`` pointed at ``url`` (e.g. a local simulator).

        Raises ConfigError for an unknown upstream or a URL that is not http(s)://host[:port].
        """
        if upstream not in self.upstreams:
            known = ", ".join(sorted(self.upstreams)) or "none"
            msg = f"unknown upstream {upstream!r}; defined upstreams: {known}"
            raise ConfigError(msg)
        problem, normalized = check_base_url(url)
        if problem is not None:
            msg = f"upstreams.{upstream}.base_url = {url!r}: {problem}"
            raise ConfigError(msg)
        upstreams = dict(self.upstreams)
        upstreams[upstream] = attrs.evolve(upstreams[upstream], base_url=normalized)
        return attrs.evolve(self, upstreams=upstreams)
