"""Rate gate values: the per-upstream pacing state and its pure decisions (no awaits, no I/O).

Holds ``RatePolicy`` (the settings), ``Bucket`` (one upstream's mutable pacing state, owned by
the gate task), ``GateView`` (its immutable published copy), ``earliest_admission`` and
``refusal_reason`` (the decisions), ``Refusal`` and the ``SLACK`` / ``NO_CLOSURE`` constants.
The actor that owns the buckets is ``claykiln.actors.gate``.

Pacing is GCRA (virtual scheduling): with interval T = 1/per_second and tolerance
tau = (burst - 1) * T, a reservation at ``now`` is admitted at max(now, tat - tau, closed_until)
and moves ``tat`` to max(admitted, tat) + T. Admission times only grow, so waiters are served FIFO.
A closure bumps ``tat`` to closed_until + tau: when the gate reopens the bucket holds one token and
refills at the policy rate (no burst of ``burst`` calls into an upstream that just said 429).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

import attrs

__all__ = [
    "DEFAULT_POLICY",
    "NO_CLOSURE",
    "SLACK",
    "Bucket",
    "GateView",
    "RatePolicy",
    "Refusal",
    "earliest_admission",
    "refusal_reason",
]

NO_CLOSURE = -math.inf
SLACK = 1e-9
"""Admission times within SLACK of now count as now (float rounding of summed intervals)."""


@attrs.frozen
class RatePolicy:
    """Token bucket per upstream; ``per_second`` refill, ``burst`` capacity."""

    per_second: float = attrs.field(default=10.0, validator=attrs.validators.gt(0.0))
    burst: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    max_retry_after: float = attrs.field(default=600.0, validator=attrs.validators.gt(0.0))
    # Arrival jitter allowance: the upstream's bucket starts counting at the first *arrival*,
    # which can lag its admission (a cold connection: ~60 ms measured). Pacing exactly at the
    # upstream's limit then overshoots by a token; keeping `margin` seconds of tokens in hand
    # (1.5 calls at 10/s) never does.
    margin: float = attrs.field(default=0.15, validator=attrs.validators.ge(0.0))

    @property
    def interval(self) -> float:
        """Seconds between two tokens."""
        return 1.0 / self.per_second

    @property
    def tolerance(self) -> float:
        """GCRA tolerance: how far ahead of ``tat`` a call may go (burst - 1 intervals, less
        the arrival-jitter margin)."""
        return max(0.0, (self.burst - 1) * self.interval - self.margin)


DEFAULT_POLICY = RatePolicy()


def earliest_admission(
    now: float, tat: float, closed_until: float, policy: RatePolicy | None
) -> float:
    """When a reservation made at ``now`` would be admitted (no policy: only the closure binds)."""
    at = max(now, closed_until)
    if policy is not None:
        at = max(at, tat - policy.tolerance)
    return now if at - now <= SLACK else at


@attrs.frozen
class Refusal:
    """A reservation the deadline cannot wait for."""

    retry_after: float
    reason: str  # "closed" | "paced"


class Bucket:
    """One upstream's pacing state. Pure: no awaits, time comes in as ``now``."""

    def __init__(self, policy: RatePolicy | None, now: float) -> None:
        self.policy = policy
        self.tat = now  # a full bucket
        self.closed_until = NO_CLOSURE
        self.reason = ""
        self.announced = False  # gate.closed logged, gate.opened not yet
        self.pending: deque[float] = deque()  # admission times handed out, ascending
        self.admitted = 0
        self.limited = 0

    def reserve(self, now: float, deadline: float | None) -> float | Refusal:
        """Hand out the next admission time, or refuse if it lies past ``deadline``."""
        at = earliest_admission(now, self.tat, self.closed_until, self.policy)
        if at > now and deadline is not None and at > deadline:
            self.limited += 1
            return Refusal(retry_after=at - now, reason=refusal_reason(self.closed_until, now))
        if self.policy is not None:
            self.tat = max(at, self.tat) + self.policy.interval
        self.admitted += 1
        if at > now:
            self.pending.append(at)
        return at

    def set_policy(self, policy: RatePolicy | None) -> None:
        """Change the policy, keeping the level; a closure still reopens with one token."""
        self.policy = policy
        if policy is not None:
            self.tat = max(self.tat, self.closed_until + policy.tolerance)

    def close(self, until: float, reason: str) -> bool:
        """Close until ``until`` unless already closed at least that long; True if it changed."""
        if until <= self.closed_until:
            return False
        self.closed_until = until
        self.reason = reason
        if self.policy is not None:
            # One token at reopening, then the policy rate.
            self.tat = max(self.tat, until + self.policy.tolerance)
        return True

    def view(self, key: str, now: float) -> GateView:
        """An immutable copy for the snapshot (admission times already passed are dropped)."""
        while self.pending and self.pending[0] <= now:
            self.pending.popleft()
        return GateView(
            key=key,
            policy=self.policy,
            tat=self.tat,
            closed_until=self.closed_until,
            reason=self.reason,
            pending=tuple(self.pending),
            admitted=self.admitted,
            limited=self.limited,
        )


@attrs.frozen
class GateView:
    """One upstream as published to the request path; times are trio times."""

    key: str
    policy: RatePolicy | None
    tat: float
    closed_until: float
    reason: str
    pending: tuple[float, ...]
    admitted: int
    limited: int

    def earliest(self, now: float) -> float:
        """The earliest admission a new reservation could get (the actor may give a later one)."""
        return earliest_admission(now, self.tat, self.closed_until, self.policy)

    def tokens(self, now: float) -> float | None:
        """Estimated tokens available at ``now``; None when unlimited."""
        if self.policy is None:
            return None
        if now < self.closed_until:
            return 0.0
        level = (now - self.tat) / self.policy.interval + self.policy.burst
        return max(0.0, min(float(self.policy.burst), level))

    def waiting(self, now: float) -> int:
        """Callers holding an admission time still ahead of ``now``."""
        return len(self.pending) - bisect.bisect_right(self.pending, now)

    def stats(self, now: float, wall_now: float) -> dict[str, Any]:
        """Plain msgpack-able values for the ``status`` RPC."""
        closed = self.closed_until > now
        tokens = self.tokens(now)
        return {
            "paced": self.policy is not None,
            "per_second": None if self.policy is None else self.policy.per_second,
            "burst": None if self.policy is None else self.policy.burst,
            "closed": closed,
            "closed_for": round(self.closed_until - now, 3) if closed else 0.0,
            "closed_until_wall": wall_now + (self.closed_until - now) if closed else None,
            "reason": self.reason if closed else None,
            "tokens": None if tokens is None else round(tokens, 3),
            "waiting": self.waiting(now),
            "admitted": self.admitted,
            "limited": self.limited,
        }


def refusal_reason(closed_until: float, now: float) -> str:
    """Why a reservation at ``now`` waits: "closed" (a Retry-After closure) or "paced"."""
    return "closed" if closed_until - now > SLACK else "paced"
