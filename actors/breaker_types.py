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
    """When a breaker opens and how it recovers. Durations are seconds; rates are in (0, 1]."""

    error_threshold: float = attrs.field(default=0.5, validator=[v.gt(0), v.le(1)])
    volume_threshold: int = attrs.field(default=10, validator=v.ge(1))
    window: float = attrs.field(default=10.0, validator=v.gt(0))
    buckets: int = attrs.field(default=10, validator=v.ge(1))
    slow_call_duration: float | None = attrs.field(default=None, validator=v.optional(v.gt(0)))
    slow_call_threshold: float = attrs.field(default=1.0, validator=[v.gt(0), v.le(1)])
    reset_timeout: float = attrs.field(default=30.0, validator=v.ge(0))
    half_open_probes: int = attrs.field(default=1, validator=v.ge(1))
    probe_timeout: float = attrs.field(default=60.0, validator=v.gt(0))


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
    """What a call meant for the upstream's health; the pipeline decides (5xx -> FAILURE ...)."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


@attrs.frozen
class Ticket:
    """Permission for one call; hand it back to ``record``. ``counted=False``: nothing to report."""

    key: str
    generation: int
    probe: bool = False
    probe_id: int = 0
    counted: bool = True


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
