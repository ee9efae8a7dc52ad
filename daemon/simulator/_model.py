"""Values of the Clay simulator: settings, the fault plan, rows, and the token bucket.

Everything here is sans-I/O: frozen value classes with validators, one small mutable
``TokenBucket`` whose decisions take the current time as an argument, and ``from_json``
factories that turn a control-endpoint payload into a value or raise ``SimulatorConfigError``
with a message naming the key and the fix.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, get_args

import attrs

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_RECORD_CAP",
    "Faults",
    "OutageMode",
    "ResetMode",
    "Row",
    "SimSettings",
    "SimStats",
    "SimulatorConfigError",
    "TokenBucket",
    "WebhookConfig",
]

DEFAULT_API_KEY = "sim-api-key"
DEFAULT_RECORD_CAP = 50_000

ResetMode = Literal["off", "before_store", "after_store"]
OutageMode = Literal["off", "unavailable", "reset"]


class SimulatorConfigError(ValueError):
    """A setting or fault payload the simulator cannot accept; the message says how to fix it."""


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0 or (isinstance(value, float) and math.isnan(value)):
        msg = f"{attr.name} must be >= 0, got {value!r}"
        raise SimulatorConfigError(msg)


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        msg = f"{attr.name} must be > 0, got {value!r}"
        raise SimulatorConfigError(msg)


def _fraction(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        msg = f"{attr.name} must be a fraction between 0 and 1, got {value!r}"
        raise SimulatorConfigError(msg)


def _error_status(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if not 500 <= value <= 599:
        msg = f"{attr.name} must be a 5xx status (500-599), got {value!r}"
        raise SimulatorConfigError(msg)


def _one_of(choices: tuple[str, ...]) -> Callable[[object, attrs.Attribute[Any], str], None]:
    def check(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            msg = f"{attr.name} must be one of {', '.join(choices)}; got {value!r}"
            raise SimulatorConfigError(msg)

    return check


def _header_names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(name).lower() for name in names)


def _from_mapping(cls: type[Any], payload: Mapping[str, Any], base: Any) -> Any:
    """Build ``cls`` from ``base`` with ``payload``'s keys replaced; unknown keys are errors."""
    if not isinstance(payload, Mapping):
        msg = f"expected a JSON object for {cls.__name__}, got {type(payload).__name__}"
        raise SimulatorConfigError(msg)
    names = {a.name for a in attrs.fields(cls)}
    unknown = sorted(set(payload) - names)
    if unknown:
        msg = f"unknown {cls.__name__} key(s) {unknown}; valid keys: {sorted(names)}"
        raise SimulatorConfigError(msg)
    try:
        return attrs.evolve(base, **payload)
    except TypeError as exc:
        msg = f"bad {cls.__name__} value: {exc}"
        raise SimulatorConfigError(msg)


@attrs.frozen
class WebhookConfig:
    """One table webhook: an optional ``x-clay-webhook-auth`` token and an optional cap.

    ``cap`` None means the simulator's ``SimSettings.record_cap``.
    """

    token: str | None = None
    cap: int | None = attrs.field(default=None)

    @cap.validator
    def _check_cap(self, attr: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None:
            _non_negative(self, attr, value)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> WebhookConfig:
        """A webhook config from a control payload such as ``{"token": "t", "cap": 5}``."""
        config: WebhookConfig = _from_mapping(cls, payload, cls())
        return config


@attrs.frozen
class SimSettings:
    """How the simulated Clay behaves when no fault is injected (Clay's documented limits).

    - webhook_rate / webhook_burst: the token bucket shared by every webhook of the workspace.
    - record_cap: lifetime rows per webhook before 403 "Record limit reached for webhook".
    - max_body_bytes: larger webhook bodies get 413 (Clay documents 400; PostHog saw 413).
    - rows_kept: row bodies kept per webhook for inspection; counts stay exact beyond it.
    - api_key: the one valid ``clay-api-key`` for ``/public/v0``.
    - poll_running_count: polls of a routine run answered 202 running before 200 completed.
    - public_rate / public_burst: the public API's own token bucket.
    - auto_create_webhooks: unknown webhook ids are accepted (no token); else 404.
    - recorded_headers: request headers kept with each row (lower-case names).
    """

    webhook_rate: float = attrs.field(default=10.0, validator=_positive)
    webhook_burst: int = attrs.field(default=20, validator=_positive)
    record_cap: int = attrs.field(default=DEFAULT_RECORD_CAP, validator=_non_negative)
    max_body_bytes: int = attrs.field(default=100_000, validator=_positive)
    rows_kept: int = attrs.field(default=10_000, validator=_non_negative)
    api_key: str = DEFAULT_API_KEY
    poll_running_count: int = attrs.field(default=2, validator=_non_negative)
    public_rate: float = attrs.field(default=100.0, validator=_positive)
    public_burst: int = attrs.field(default=200, validator=_positive)
    auto_create_webhooks: bool = True
    recorded_headers: tuple[str, ...] = attrs.field(
        default=("idempotency-key", "x-request-id", "traceparent", "user-agent"),
        converter=_header_names,
    )

    def evolve_from_json(self, payload: Mapping[str, Any]) -> SimSettings:
        """These settings with the keys of a control payload replaced (others kept)."""
        settings: SimSettings = _from_mapping(SimSettings, payload, self)
        return settings

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-able map (what ``GET /_sim/settings`` answers)."""
        out = attrs.asdict(self)
        out["recorded_headers"] = list(self.recorded_headers)
        return out


@attrs.frozen
class Faults:
    """The fault plan applied to every non-control request whose path starts with path_prefix.

    Evaluation order per request: outage, hang, latency, burst, error_rate, reset before the
    handler, the handler (which may store a row), reset after the handler.

    - outage: "unavailable" answers 503 to everything, "reset" aborts every connection.
    - hang: hold the request until the plan changes, the client goes away or the server stops.
    - latency: seconds added before the request is handled (a client disconnect cuts it short).
    - burst: the next ``burst`` requests are answered with error_status (counted down once).
    - error_rate: the fraction of requests answered with error_status, drawn from an RNG
      seeded with ``seed`` each time the plan is set, so a run is reproducible.
    - reset / reset_rate: abort the connection (TCP RST, no response) before the handler runs
      ("before_store": nothing stored) or after it ran ("after_store": the row is stored but
      the client never hears so), for that fraction of requests.
    """

    error_rate: float = attrs.field(default=0.0, validator=_fraction)
    error_status: int = attrs.field(default=500, validator=_error_status)
    burst: int = attrs.field(default=0, validator=_non_negative)
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    hang: bool = False
    reset: ResetMode = attrs.field(default="off", validator=_one_of(get_args(ResetMode)))
    reset_rate: float = attrs.field(default=1.0, validator=_fraction)
    outage: OutageMode = attrs.field(default="off", validator=_one_of(get_args(OutageMode)))
    path_prefix: str = ""
    seed: int = 0

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Faults:
        """A whole plan from a control payload; missing keys take their defaults (``{}`` clears)."""
        faults: Faults = _from_mapping(cls, payload, cls())
        return faults

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON-able map."""
        return attrs.asdict(self)

    @property
    def active(self) -> bool:
        """Whether this plan can change any answer (the default plan cannot)."""
        return self != _NO_FAULTS


_NO_FAULTS = Faults()


@attrs.frozen
class Row:
    """One row a webhook stored: its 1-based sequence number, the parsed JSON body, the recorded
    request headers (lower-case names) and the simulator clock's time of arrival."""

    seq: int
    body: Any
    headers: Mapping[str, str]
    received_at: float

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON-able map."""
        return {
            "seq": self.seq,
            "body": self.body,
            "headers": dict(self.headers),
            "received_at": self.received_at,
        }


@attrs.define
class TokenBucket:
    """A token bucket: ``rate`` tokens per second up to ``burst``; starts full.

    Pure state: every decision takes ``now`` (seconds, any monotonic clock) as an argument.
    """

    rate: float
    burst: int
    tokens: float = attrs.field(default=-1.0)
    updated: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def try_take(self, now: float) -> bool:
        """Take one token if there is one; False means the caller is rate limited."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 if one is available now)."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def remaining(self, now: float) -> int:
        """Whole tokens available now."""
        self._refill(now)
        return int(self.tokens)


@attrs.define
class SimStats:
    """Exact counters. Control requests (``/_sim/``) count only in ``received["control"]``.

    - received[kind]: requests that reached the simulator, by path kind.
    - responses[(kind, status)]: answers sent, by kind and status.
    - resets[kind]: connections aborted without an answer (reset faults).
    - abandoned[kind]: requests whose client went away before it was answered.
    - in_flight / hanging / delayed: non-control requests being handled / held by a hang /
      sleeping in injected latency, right now.
    """

    received: Counter[str] = attrs.field(factory=Counter)
    responses: Counter[tuple[str, int]] = attrs.field(factory=Counter)
    resets: Counter[str] = attrs.field(factory=Counter)
    abandoned: Counter[str] = attrs.field(factory=Counter)
    in_flight: int = 0
    hanging: int = 0
    delayed: int = 0
    routine_runs_started: int = 0
    routine_runs_completed: int = 0

    @property
    def clay_requests(self) -> int:
        """Requests that reached "Clay" (every kind but control)."""
        return sum(n for kind, n in self.received.items() if kind != "control")

    def to_json(self) -> dict[str, Any]:
        """The counters as a JSON-able map (status keys become strings)."""
        responses: dict[str, dict[str, int]] = {}
        for (kind, status), n in sorted(self.responses.items()):
            responses.setdefault(kind, {})[str(status)] = n
        return {
            "received": dict(self.received),
            "responses": responses,
            "resets": dict(self.resets),
            "abandoned": dict(self.abandoned),
            "clay_requests": self.clay_requests,
            "in_flight": self.in_flight,
            "hanging": self.hanging,
            "delayed": self.delayed,
            "routine_runs": {
                "started": self.routine_runs_started,
                "completed": self.routine_runs_completed,
            },
        }
