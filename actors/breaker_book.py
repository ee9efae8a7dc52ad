"""The breaker actor's state: one machine per key, the opening events, persistence and the
transition log lines. Only the actor task (actors/breaker.py) calls it; no awaits here.

``BreakerBook`` is to the breaker actor what ``LaneBook`` is to lanes: the breaker actor moves
messages and time, the book applies them. Each wake: ``tick_due`` and the calls the messages ask
for (``record``, ``acquire``, ``force``, ``reconfigure``), then ``finish_wake``, which logs and
persists the transitions, sets the opening events of keys that opened (waking callers waiting
in backoff) and hands back the new views to publish.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from claykiln.actors.breaker_state import BreakerMachine, restore_from_record, to_record
from claykiln.actors.breaker_types import (
    BreakerPolicy,
    BreakerState,
    BreakerView,
    ForceCommand,
    Outcome,
    Rejection,
    Ticket,
    Transition,
    policy_for,
)
from claykiln.actors.log import alert, get_logger

__all__ = ["BreakerBook", "LoadFn", "PersistFn"]

log = get_logger("claykiln.breaker")

_REFUSING = frozenset({BreakerState.OPEN, BreakerState.FORCED_OPEN})


class PersistFn(Protocol):
    def __call__(self, key: str, record: dict[str, Any], /) -> None: ...


class LoadFn(Protocol):
    def __call__(self, key: str, /) -> dict[str, Any] | None: ...


@attrs.define
class BreakerBook:
    """Everything the breaker task owns (see the module docstring)."""

    policies: Mapping[str, BreakerPolicy]
    default: BreakerPolicy
    persist: PersistFn
    load: LoadFn
    wall_clock: Callable[[], float]
    rng: random.Random
    machines: dict[str, BreakerMachine] = attrs.Factory(dict)
    openings: dict[str, trio.Event] = attrs.Factory(dict)  # key -> set at its next opening
    changed: set[str] = attrs.Factory(set)
    asks: int = 0
    stale_records: int = 0
    persist_failures: int = 0

    def load_configured(self, now: float) -> None:
        """Create (and restore) the machine of every configured key."""
        for key in self.policies:
            self.machine(key, now)

    def record(self, ticket: Ticket, outcome: Outcome, duration: float, now: float) -> None:
        """Count an outcome; a stale one (another generation, a lost probe) is only counted
        in ``stale_records``."""
        machine = self.machines.get(ticket.key)
        if machine is not None and machine.record(ticket, outcome, duration, now):
            self.changed.add(ticket.key)
        else:
            self.stale_records += 1

    def acquire(self, key: str, now: float) -> Ticket | Rejection:
        """A ticket (a probe slot in half-open) or a rejection for ``key``."""
        machine = self.machine(key, now)
        self.changed.add(key)
        return machine.acquire(now)

    def force(self, key: str, command: ForceCommand, now: float) -> BreakerView:
        machine = self.machine(key, now)
        machine.force(command, now)
        self.changed.add(key)
        return machine.view(now)

    def machine(self, key: str, now: float) -> BreakerMachine:
        """The machine of ``key``, created (and restored from ``load``) on first use."""
        machine = self.machines.get(key)
        if machine is not None:
            return machine
        policy = policy_for(key, self.policies, self.default)
        machine = BreakerMachine(key, policy, self.rng)
        self.machines[key] = machine
        self.openings[key] = trio.Event()
        self.changed.add(key)
        try:
            record = self.load(key)
            if record is not None:
                restored = restore_from_record(record, policy, now, self.wall_clock())
                machine.restore(restored, now)
                log.info("breaker.restored", key=key, state=machine.state.value)
        except Exception as exc:
            log.warning("breaker.restore_failed", key=key, error=repr(exc))
        return machine

    def reconfigure(
        self, policies: Mapping[str, BreakerPolicy], default: BreakerPolicy, now: float
    ) -> None:
        """New policies for every machine (states kept); configured keys never seen appear."""
        self.policies, self.default = policies, default
        for key, machine in self.machines.items():
            machine.reconfigure(policy_for(key, policies, default), now)
            self.changed.add(key)
        self.load_configured(now)
        log.info("breaker.reconfigured", keys=sorted(policies))

    def tick_due(self, now: float) -> None:
        """Apply the time-driven transitions that came due (end of OPEN, hung probes)."""
        for key, machine in self.machines.items():
            deadline = machine.next_deadline()
            if deadline is not None and deadline <= now:
                machine.tick(now)
                self.changed.add(key)

    def next_deadline(self) -> float:
        """When the loop must wake for ``tick_due`` (inf: only for a message)."""
        deadlines = [m.next_deadline() for m in self.machines.values()]
        return min((d for d in deadlines if d is not None), default=math.inf)

    def finish_wake(self, now: float) -> dict[str, BreakerView]:
        """Log and persist the transitions of this wake; the new views of the changed keys."""
        views: dict[str, BreakerView] = {}
        wall_now = self.wall_clock()
        for key in self.changed:
            machine = self.machines[key]
            transitions = machine.take_transitions()
            for transition in transitions:
                _log_transition(transition)
                if transition.after in _REFUSING:
                    self.openings.pop(key).set()  # wakes callers in backoff; they see the view
                    self.openings[key] = trio.Event()
            if transitions:
                self._persist(machine, now, wall_now)
            views[key] = machine.view(now)
        self.changed.clear()
        return views

    def _persist(self, machine: BreakerMachine, now: float, wall_now: float) -> None:
        try:
            self.persist(machine.key, to_record(machine, now, wall_now))
        except Exception as exc:
            self.persist_failures += 1
            alert(
                log,
                "breaker.persist_failed",
                severity="warning",
                level="error",
                key=machine.key,
                error=repr(exc),
            )


def _log_transition(t: Transition) -> None:
    fields = {"key": t.key, "previous": t.before.value, "reason": t.reason}
    if t.reason.startswith("forced_"):
        log.warning("breaker.forced", state=t.after.value, **fields)
    elif t.after is BreakerState.OPEN:
        alert(
            log,
            "breaker.opened",
            severity="warning",
            calls=t.calls,
            failures=t.failures,
            slow_calls=t.slow_calls,
            error_rate=t.failures / t.calls if t.calls else 0.0,
            retry_after=t.open_for,
            **fields,
        )
    elif t.after is BreakerState.HALF_OPEN:
        log.info("breaker.half_open", **fields)
    elif t.after is BreakerState.CLOSED:
        # An alert (the all-clear for breaker.opened) so it passes any log level.
        alert(log, "breaker.closed", severity="info", **fields)
