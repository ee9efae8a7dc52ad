"""The circuit breaker's values: policy, states, outcomes, tickets, views, and the snapshot rule.

Shared by the pure machine (breaker_state.py) and the actor (breaker.py); no behaviour here but
``policy_for`` (which policy a key uses) and ``decide_from_view`` (what the request path may
answer from a published view without asking the actor).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from attrs import validators as v

__all__ = [
    "COUNTING_STATES",
    "FAILURES",
    "FORCED_STATES",
    "BreakerPolicy",
    "BreakerState",
    "BreakerView",
    "ForceCommand",
    "Outcome",
    "Rejection",
    "Ticket",
    "Transition",
    "decide_from_view",
    "policy_for",
    "view_to_wire",
]

ForceCommand = Literal["open", "closed", "disabled", "reset"]


@attrs.frozen
class BreakerPolicy:
    """When a breaker opens and how it recovers. Durations are seconds; rates are in (0, 1].

    Trip signals (any one opens a CLOSED breaker; 0 turns a count off):
    ``consecutive_failures`` failures in a row (5xx, 408, timeouts, resets, connect failures;
    a success resets it), ``consecutive_connect_failures`` connect failures in a row (the
    request never left; any answer from the upstream resets it), and over the rolling
    ``window``: at least ``volume_threshold`` calls with an error rate >= ``error_threshold``
    or a slow-call rate >= ``slow_call_threshold``.

    Open interval: the n-th opening in a row stays open ``reset_timeout * reset_backoff**n``
    seconds (n from 0), at most ``max_reset_timeout`` (never below ``reset_timeout``), each
    drawn within +/- ``reset_jitter / 2`` of that; a breaker closed for ``healthy_period``
    starts again from ``reset_timeout``. ``reset_backoff = 1`` keeps every interval at
    ``reset_timeout`` (the fixed 30 s of earlier versions: ``reset_timeout = 30``,
    ``reset_backoff = 1``, ``reset_jitter = 0``).

    ``probe_operation``: the operation a half-open breaker is tested with instead of a caller's
    request (set by the daemon from ``[upstreams.NAME] probe``; not a breaker table key).
    """

    error_threshold: float = attrs.field(default=0.5, validator=[v.gt(0), v.le(1)])
    volume_threshold: int = attrs.field(default=10, validator=v.ge(1))
    window: float = attrs.field(default=10.0, validator=v.gt(0))
    buckets: int = attrs.field(default=10, validator=v.ge(1))
    slow_call_duration: float | None = attrs.field(default=None, validator=v.optional(v.gt(0)))
    slow_call_threshold: float = attrs.field(default=1.0, validator=[v.gt(0), v.le(1)])
    consecutive_failures: int = attrs.field(default=5, validator=v.ge(0))
    consecutive_connect_failures: int = attrs.field(default=3, validator=v.ge(0))
    reset_timeout: float = attrs.field(default=0.5, validator=v.ge(0))
    reset_backoff: float = attrs.field(default=2.0, validator=v.ge(1))
    max_reset_timeout: float = attrs.field(default=60.0, validator=v.ge(0))
    reset_jitter: float = attrs.field(default=0.1, validator=[v.ge(0), v.lt(1)])
    healthy_period: float = attrs.field(default=60.0, validator=v.ge(0))
    half_open_probes: int = attrs.field(default=1, validator=v.ge(1))
    probe_timeout: float = attrs.field(default=60.0, validator=v.gt(0))
    probe_operation: str | None = attrs.field(default=None, metadata={"config": False})

    @property
    def longest_open(self) -> float:
        """The longest an OPEN breaker stays open: the cap (never below ``reset_timeout``), or
        ``reset_timeout`` when the interval does not grow, plus the jitter."""
        if self.reset_backoff == 1:
            return self.reset_timeout * (1 + self.reset_jitter / 2)
        return max(self.reset_timeout, self.max_reset_timeout) * (1 + self.reset_jitter / 2)

    def open_interval(self, streak: int, jitter: float) -> float:
        """Seconds the ``streak``-th opening in a row (0 = the first) stays open; ``jitter`` in
        [0, 1) picks the point within the jitter band (0.5 = the nominal interval)."""
        cap = max(self.reset_timeout, self.max_reset_timeout)
        nominal = min(cap, self.reset_timeout * self.reset_backoff ** min(streak, 64))
        return nominal * (1 + self.reset_jitter * (jitter - 0.5))


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"
    DISABLED = "disabled"


FORCED_STATES = frozenset(
    {BreakerState.FORCED_OPEN, BreakerState.FORCED_CLOSED, BreakerState.DISABLED}
)
COUNTING_STATES = frozenset({BreakerState.CLOSED, BreakerState.FORCED_CLOSED})


class Outcome(enum.Enum):
    """What a call meant for the upstream's health; the pipeline decides (5xx -> FAILURE ...).

    CONNECT_FAILURE is a FAILURE before the request left (refused, unreachable, connect
    timeout): it counts as a failure everywhere and also towards consecutive connect failures.
    """

    SUCCESS = "success"
    FAILURE = "failure"
    CONNECT_FAILURE = "connect_failure"
    IGNORED = "ignored"


FAILURES = frozenset({Outcome.FAILURE, Outcome.CONNECT_FAILURE})


@attrs.frozen
class Ticket:
    """Permission for one call; hand it back to ``record``. ``counted=False``: nothing to report.

    A probe ticket (``probe``) with a ``probe_operation`` asks the caller to test the upstream
    with that operation first (``BreakerBoard.settle_probe``) instead of with its own request.
    """

    key: str
    generation: int
    probe: bool = False
    probe_id: int = 0
    counted: bool = True
    probe_operation: str | None = None


@attrs.frozen
class Rejection:
    """Fail fast. ``retry_after`` (seconds) is None when only an operator can reopen the flow."""

    key: str
    state: BreakerState
    retry_after: float | None


@attrs.frozen
class Transition:
    """One state change, with the window's figures at that moment (for logs and alerts)."""

    key: str
    before: BreakerState
    after: BreakerState
    reason: str
    at: float
    calls: int
    failures: int
    slow_calls: int
    open_for: float | None = None  # seconds until a probe may pass, for a change to OPEN


@attrs.frozen
class BreakerView:
    """An immutable picture of one breaker, published for the request path and ``status``.

    ``open_until``: when OPEN ends (trio time). ``probe_deadline``: the earliest in-flight probe's
    deadline in HALF_OPEN, the latest moment the round is decided. ``ticket``: the shared ticket
    for a state that admits every caller (closed, forced closed, disabled), else None.
    """

    key: str
    state: BreakerState
    generation: int
    open_until: float | None
    opened_at: float | None
    failures: int
    calls: int
    slow_calls: int
    error_rate: float
    probes_in_flight: int
    probe_slots: int
    probe_deadline: float | None
    ticket: Ticket | None


def policy_for(
    key: str, policies: Mapping[str, BreakerPolicy], default: BreakerPolicy
) -> BreakerPolicy:
    """The policy of ``key``: its own, else its upstream's (``"clay/op"`` -> ``"clay"``) or
    the default."""
    found = policies.get(key)
    if found is None and "/" in key:
        found = policies.get(key.split("/", 1)[0])
    return default if found is None else found


def decide_from_view(view: BreakerView, now: float) -> Ticket | Rejection | None:
    """Answer an acquire from a published view: a ticket, a rejection, or None (ask the actor)."""
    if view.ticket is not None:
        return view.ticket
    state = view.state
    if state is BreakerState.FORCED_OPEN:
        return Rejection(view.key, state, None)
    if state is BreakerState.OPEN:
        if view.open_until is not None and now < view.open_until:
            return Rejection(view.key, state, view.open_until - now)
        return None
    if view.probe_slots > 0:
        return None
    deadline = view.probe_deadline
    return Rejection(view.key, state, None if deadline is None else max(0.0, deadline - now))


def view_to_wire(view: BreakerView, now: float, wall_now: float) -> dict[str, Any]:
    """The msgpack-able form of a view (``breaker.list``); trio times become wall-clock times."""
    retry_after = None if view.open_until is None else max(0.0, view.open_until - now)
    opened_at = None if view.opened_at is None else wall_now - (now - view.opened_at)
    return {
        "key": view.key,
        "state": view.state.value,
        "forced": view.state in FORCED_STATES,
        "opened_at": opened_at,
        "open_until": None if retry_after is None else wall_now + retry_after,
        "retry_after": retry_after,
        "calls": view.calls,
        "failures": view.failures,
        "slow_calls": view.slow_calls,
        "error_rate": view.error_rate,
        "probes_in_flight": view.probes_in_flight,
    }
