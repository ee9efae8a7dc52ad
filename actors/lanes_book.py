"""Lane values: the per-lane admission state and its pure decisions (no awaits, no I/O).

Holds ``LanePolicy`` (the settings) and ``DEFAULT_LANES``, ``LaneBook`` (one lane's mutable
holders / FIFO waiters / counters, owned by the lanes task), ``LaneView`` (its immutable
published copy) and ``retry_hint``. Tickets are opaque hashables here; the actor that owns the
books and hands out tickets is ``claykiln.actors.lanes``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs

__all__ = [
    "DEFAULT_LANES",
    "HOLD_SMOOTHING",
    "MIN_RETRY_HINT",
    "LaneBook",
    "LanePolicy",
    "LaneView",
    "retry_hint",
]

MIN_RETRY_HINT = 0.05
HOLD_SMOOTHING = 0.2  # weight of the newest hold time in the moving average


@attrs.frozen
class LanePolicy:
    """One lane: ``concurrency`` callers at once, ``queue`` waiting, each at most ``max_wait`` s."""

    concurrency: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    queue: int = attrs.field(default=50, validator=attrs.validators.ge(0))
    max_wait: float = attrs.field(default=5.0, validator=attrs.validators.gt(0.0))


DEFAULT_LANES: Mapping[str, LanePolicy] = MappingProxyType(
    {
        "critical": LanePolicy(concurrency=10),
        "normal": LanePolicy(concurrency=5),
        "bulk": LanePolicy(concurrency=2),
    }
)


def retry_hint(hold: float | None, queued: int, policy: LanePolicy) -> float:
    """A ``retry_after`` hint: the time for the queue ahead to drain at the observed hold time."""
    typical = policy.max_wait if hold is None else hold
    return min(policy.max_wait, max(MIN_RETRY_HINT, typical * (queued + 1) / policy.concurrency))


class LaneBook:
    """One lane's admission state. Pure: no awaits, time comes in as ``now``; tickets are opaque."""

    def __init__(self, policy: LanePolicy) -> None:
        self.policy = policy
        self.retired = False  # removed by reconfigure: no new entries, in-flight ones finish
        self.holders: dict[Hashable, float] = {}  # ticket -> time granted
        self.waiters: OrderedDict[Hashable, float] = OrderedDict()  # ticket -> expires at
        self.admitted = 0
        self.rejected = 0  # queue_full + max_wait
        self.timeouts = 0
        self.cancelled = 0
        self.hold: float | None = None  # moving average of slot hold time

    def enter(
        self, ticket: Hashable, expires_at: float, now: float
    ) -> Literal["granted", "queued", "full"]:
        """Grant a free slot (only if nobody waits: FIFO), else queue until ``expires_at``."""
        if len(self.holders) < self.policy.concurrency and not self.waiters:
            self._grant(ticket, now)
            return "granted"
        if len(self.waiters) < self.policy.queue:
            self.waiters[ticket] = expires_at
            return "queued"
        self.rejected += 1
        return "full"

    def leave(self, ticket: Hashable, outcome: str, now: float) -> list[Hashable]:
        """Release a slot or withdraw from the queue; returns the waiters granted as a result."""
        if outcome == "timeout":
            self.timeouts += 1
        elif outcome == "max_wait":
            self.rejected += 1
        elif outcome == "cancelled":
            self.cancelled += 1
        granted_at = self.holders.pop(ticket, None)
        if granted_at is not None:
            held = now - granted_at
            self.hold = (
                held if self.hold is None else self.hold + HOLD_SMOOTHING * (held - self.hold)
            )
            return self.hand_on(now)
        self.waiters.pop(ticket, None)
        return []

    def hand_on(self, now: float) -> list[Hashable]:
        """Grant free slots to the oldest waiters whose time is not up (FIFO)."""
        granted = []
        while self.waiters and len(self.holders) < self.policy.concurrency:
            ticket, expires_at = self.waiters.popitem(last=False)
            if expires_at > now:  # at or past it, its caller is already leaving
                self._grant(ticket, now)
                granted.append(ticket)
        return granted

    def _grant(self, ticket: Hashable, now: float) -> None:
        self.holders[ticket] = now
        self.admitted += 1

    def view(self, name: str) -> LaneView:
        """An immutable copy for the snapshot."""
        return LaneView(
            name=name,
            policy=self.policy,
            active=len(self.holders),
            queued=len(self.waiters),
            admitted=self.admitted,
            rejected=self.rejected,
            timeouts=self.timeouts,
            cancelled=self.cancelled,
            hold=self.hold,
            retired=self.retired,
        )


@attrs.frozen
class LaneView:
    """One lane as published to the request path."""

    name: str
    policy: LanePolicy
    active: int
    queued: int
    admitted: int
    rejected: int
    timeouts: int
    cancelled: int
    hold: float | None
    retired: bool

    @property
    def full(self) -> bool:
        """No free slot and no queue place."""
        return self.active >= self.policy.concurrency and self.queued >= self.policy.queue

    @property
    def saturation(self) -> float:
        """Holders over concurrency (above 1.0 briefly after a shrink)."""
        return self.active / self.policy.concurrency

    def stats(self) -> dict[str, Any]:
        """Plain msgpack-able values for the ``status`` RPC."""
        return {
            "active": self.active,
            "queued": self.queued,
            "concurrency": self.policy.concurrency,
            "queue": self.policy.queue,
            "max_wait": self.policy.max_wait,
            "saturation": round(self.saturation, 3),
            "admitted": self.admitted,
            "rejected": self.rejected,
            "timeouts": self.timeouts,
            "cancelled": self.cancelled,
            "retired": self.retired,
        }
