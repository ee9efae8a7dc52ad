"""The circuit breaker's state machine: pure and sans-I/O; every method takes ``now`` (trio time).

    CLOSED ──(consecutive_failures failures in a row, or consecutive_connect_failures connect
              failures in a row, or the window holds >= volume_threshold calls and the error
              rate >= error_threshold or the slow-call rate >= slow_call_threshold)──> OPEN
    OPEN ──(now >= open_until = opened + the open interval)──────────────────────> HALF_OPEN
    HALF_OPEN ──(half_open_probes probes succeeded)──────────────────────────────> CLOSED
    HALF_OPEN ──(a probe failed, was slow, or was not reported by probe_timeout)──> OPEN
    any ──force──> FORCED_OPEN | FORCED_CLOSED | DISABLED;  any ──reset──> CLOSED

The trip checks run as each call is counted (not as old calls expire from the window).
The open interval grows with each opening in a row (``streak``): ``BreakerPolicy.open_interval``,
jittered by the machine's ``rng``; an opening after ``healthy_period`` seconds closed (or a
reset) starts the streak again. Every state change starts a new ``generation``; a ticket
carries the generation it was issued in, so an outcome reported after a change (a call admitted
before a trip, a probe reported after its timeout) is stale and ignored. Entering CLOSED,
FORCED_CLOSED or DISABLED starts a fresh window and fresh in-a-row counts. FORCED_CLOSED counts
calls but never trips; DISABLED counts nothing. Half-open admits a round of
``half_open_probes`` probes: a probe slot is free while ``successes + in flight <
half_open_probes``; an IGNORED probe (a 429, a cancelled caller) frees its slot without a
verdict. A probe that succeeded but took longer than ``slow_call_duration`` (when set) counts as
a failed probe.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs

from claykiln.actors.breaker_types import (
    COUNTING_STATES,
    FAILURES,
    FORCED_STATES,
    BreakerPolicy,
    BreakerState,
    BreakerView,
    ForceCommand,
    Outcome,
    Rejection,
    Ticket,
    Transition,
    decide_from_view,
)
from claykiln.actors.breaker_window import RollingWindow

__all__ = ["BreakerMachine", "Restored", "RollingWindow", "restore_from_record", "to_record"]

RECORD_VERSION = 1
_FORCED_BY_COMMAND: Mapping[str, BreakerState] = {
    "open": BreakerState.FORCED_OPEN,
    "closed": BreakerState.FORCED_CLOSED,
    "disabled": BreakerState.DISABLED,
    "reset": BreakerState.CLOSED,
}


class BreakerMachine:
    """One breaker's state (the actor's only; no awaits). Transitions queue for the actor."""

    def __init__(self, key: str, policy: BreakerPolicy, rng: random.Random | None = None) -> None:
        self.key = key
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.generation = 0
        self.open_until: float | None = None
        self.opened_at: float | None = None
        self.window = RollingWindow(policy.window, policy.buckets)
        self.streak = 0  # openings in a row: the next open interval grows with it
        self.closed_since: float | None = None  # when CLOSED began (None: since creation)
        self.failures_in_row = 0
        self.connect_failures_in_row = 0
        self._rng = rng or random.Random()
        self._probes: dict[int, float] = {}  # probe id -> deadline
        self._successes = 0
        self._next_probe = 1
        self._transitions: list[Transition] = []

    # -- queries -------------------------------------------------------------------------
    @property
    def probes_in_flight(self) -> int:
        return len(self._probes)

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work: OPEN's end or the earliest probe deadline."""
        if self.state is BreakerState.OPEN:
            return self.open_until
        if self.state is BreakerState.HALF_OPEN and self._probes:
            return min(self._probes.values())
        return None

    def take_transitions(self) -> list[Transition]:
        """The transitions since the last call (oldest first), handed over once."""
        out, self._transitions = self._transitions, []
        return out

    def view(self, now: float) -> BreakerView:
        self.window.advance(now)
        w = self.window
        state = self.state
        ticket = None
        if state in COUNTING_STATES or state is BreakerState.DISABLED:
            counted = state is not BreakerState.DISABLED
            ticket = Ticket(self.key, self.generation, counted=counted)
        slots = 0
        if state is BreakerState.HALF_OPEN:
            slots = max(0, self.policy.half_open_probes - self._successes - len(self._probes))
        return BreakerView(
            key=self.key,
            state=state,
            generation=self.generation,
            open_until=self.open_until if state is BreakerState.OPEN else None,
            opened_at=self.opened_at,
            failures=w.failures,
            calls=w.calls,
            slow_calls=w.slow_calls,
            error_rate=w.failures / w.calls if w.calls else 0.0,
            probes_in_flight=len(self._probes),
            probe_slots=slots,
            probe_deadline=min(self._probes.values()) if self._probes else None,
            ticket=ticket,
        )

    # -- commands ------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Apply the time-driven transitions due at ``now`` (hung probes, end of OPEN)."""
        if self.state is BreakerState.HALF_OPEN and any(d <= now for d in self._probes.values()):
            self._open(now, "probe_timeout")
        if (
            self.state is BreakerState.OPEN
            and self.open_until is not None
            and now >= self.open_until
        ):
            self._enter(BreakerState.HALF_OPEN, now, "reset_timeout")

    def acquire(self, now: float) -> Ticket | Rejection:
        """A ticket (a probe ticket in half-open, taking a slot until reported or timed out)."""
        self.tick(now)
        free = self.policy.half_open_probes - self._successes - len(self._probes)
        if self.state is BreakerState.HALF_OPEN and free > 0:
            probe_id = self._next_probe
            self._next_probe += 1
            self._probes[probe_id] = now + self.policy.probe_timeout
            return Ticket(
                self.key,
                self.generation,
                probe=True,
                probe_id=probe_id,
                probe_operation=self.policy.probe_operation,
            )
        decided = decide_from_view(self.view(now), now)
        assert decided is not None  # the view of a ticked machine never defers to an ask
        return decided

    def record(self, ticket: Ticket, outcome: Outcome, duration: float, now: float) -> bool:
        """Count one outcome; False when the ticket is stale (another generation, a lost probe)."""
        self.tick(now)
        if ticket.generation != self.generation:
            return False
        slow_limit = self.policy.slow_call_duration
        slow = slow_limit is not None and duration > slow_limit
        if ticket.probe:
            if self._probes.pop(ticket.probe_id, None) is None:
                return False
            if outcome in FAILURES:
                self._open(now, "probe_failed")
            elif outcome is Outcome.SUCCESS and slow:
                self._open(now, "probe_slow")
            elif outcome is Outcome.SUCCESS:
                self._successes += 1
                if self._successes >= self.policy.half_open_probes:
                    self._enter(BreakerState.CLOSED, now, "probes_succeeded")
            return True
        if self.state not in COUNTING_STATES:
            return self.state is BreakerState.DISABLED
        if outcome is Outcome.IGNORED:
            return True
        failed = outcome in FAILURES
        self.window.add(now, failed=failed, slow=slow)
        self.failures_in_row = self.failures_in_row + 1 if failed else 0
        connect = outcome is Outcome.CONNECT_FAILURE
        self.connect_failures_in_row = self.connect_failures_in_row + 1 if connect else 0
        if self.state is BreakerState.CLOSED:
            reason = self._trip_reason()
            if reason is not None:
                self._open(now, reason)
        return True

    def force(self, command: ForceCommand, now: float) -> None:
        """Operator override; ``reset`` returns to CLOSED. Every force starts a fresh window."""
        target = _FORCED_BY_COMMAND.get(command)
        if target is None:
            msg = f"unknown breaker command {command!r}; use one of open, closed, disabled, reset"
            raise ValueError(msg)
        self._enter(target, now, f"forced_{command}")

    def restore(self, restored: Restored, now: float) -> None:
        """Adopt a persisted state (see ``restore_from_record``), then apply what came due.

        A restored CLOSED breaker counts its healthy period from ``now``.
        """
        self._set_state(restored.state)
        self.open_until = restored.open_until
        self.opened_at = restored.opened_at
        self.streak = restored.streak
        self.closed_since = now if restored.state is BreakerState.CLOSED else None
        self.tick(now)

    def reconfigure(self, policy: BreakerPolicy, now: float) -> None:
        """New thresholds apply from now on; the window restarts only if its geometry changed.

        The state is kept; a half-open round that already has enough successes closes.
        """
        self.policy = policy
        if self.window.geometry() != (policy.window, policy.buckets):
            self.window = RollingWindow(policy.window, policy.buckets)
        if self.state is BreakerState.HALF_OPEN and self._successes >= policy.half_open_probes:
            self._enter(BreakerState.CLOSED, now, "probes_succeeded")

    # -- internals -----------------------------------------------------------------------
    def _trip_reason(self) -> str | None:
        w, p = self.window, self.policy
        if 0 < p.consecutive_connect_failures <= self.connect_failures_in_row:
            return "consecutive_connect_failures"
        if 0 < p.consecutive_failures <= self.failures_in_row:
            return "consecutive_failures"
        if w.calls < p.volume_threshold:
            return None
        if w.failures / w.calls >= p.error_threshold:
            return "error_rate"
        if p.slow_call_duration is not None and w.slow_calls / w.calls >= p.slow_call_threshold:
            return "slow_calls"
        return None

    def _open(self, now: float, reason: str) -> None:
        """Open for the streak's interval; a first opening after a healthy period starts over."""
        since = self.closed_since
        if self.state is BreakerState.CLOSED and since is not None:
            self.streak = 0 if now - since >= self.policy.healthy_period else self.streak
        interval = self.policy.open_interval(self.streak, self._rng.random())
        self.streak += 1
        self._enter(BreakerState.OPEN, now, reason, open_for=interval)
        self.opened_at = now
        self.open_until = now + interval

    def _enter(
        self, state: BreakerState, now: float, reason: str, open_for: float | None = None
    ) -> None:
        self.window.advance(now)
        w = self.window
        self._transitions.append(
            Transition(
                self.key,
                self.state,
                state,
                reason,
                now,
                w.calls,
                w.failures,
                w.slow_calls,
                open_for,
            )
        )
        self._set_state(state)
        if state in COUNTING_STATES or state is BreakerState.DISABLED:
            self.window = RollingWindow(self.policy.window, self.policy.buckets)
            self.failures_in_row = self.connect_failures_in_row = 0
            self.open_until = None
            self.opened_at = None
        elif state is BreakerState.FORCED_OPEN:
            self.open_until = None
        self.closed_since = now if state is BreakerState.CLOSED else None
        if reason == "forced_reset":
            self.streak = 0

    def _set_state(self, state: BreakerState) -> None:
        self.state = state
        self.generation += 1
        self._probes.clear()
        self._successes = 0


# -- persistence (pure conversions; the actor calls persist/load) --------------------------
@attrs.frozen
class Restored:
    """A persisted state converted to trio time."""

    state: BreakerState
    open_until: float | None
    opened_at: float | None
    streak: int = 0


def to_record(machine: BreakerMachine, now: float, wall_now: float) -> dict[str, Any]:
    """The msgpack-able record persisted on a transition; times are wall-clock seconds."""

    def wall(t: float | None) -> float | None:
        return None if t is None else wall_now + (t - now)

    return {
        "v": RECORD_VERSION,
        "state": machine.state.value,
        "forced": machine.state in FORCED_STATES,
        "opened_at": wall(machine.opened_at),
        "open_until": wall(machine.open_until),
        "streak": machine.streak,
    }


def restore_from_record(
    record: Mapping[str, Any], policy: BreakerPolicy, now: float, wall_now: float
) -> Restored:
    """Convert a persisted record to trio time; raise ValueError if it is malformed.

    An OPEN breaker keeps the rest of its open interval (at most the policy's longest, in case
    the wall clock moved back); if that time passed during the downtime, ``open_until`` is
    ``now`` and the machine comes up half-open. The streak of openings survives (a record
    without one, from an earlier version, has none); forced states stay forced; probes do not
    survive.
    """
    try:
        state = BreakerState(record["state"])
    except (KeyError, TypeError, ValueError):
        msg = f"breaker record has no valid state: {record!r}"
        raise ValueError(msg) from None

    def trio_time(name: str) -> float | None:
        value = record.get(name)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            msg = f"breaker record field {name!r} is not a number: {value!r}"
            raise ValueError(msg)
        return now - (wall_now - float(value))

    opened_at = trio_time("opened_at")
    open_until = trio_time("open_until")
    if state is BreakerState.OPEN:
        if open_until is None:
            open_until = now + policy.reset_timeout
        open_until = min(max(open_until, now), now + policy.longest_open)
    else:
        open_until = None
    streak = record.get("streak", 0)
    if not isinstance(streak, int) or isinstance(streak, bool) or streak < 0:
        msg = f"breaker record field 'streak' is not a count: {streak!r}"
        raise ValueError(msg)
    return Restored(state, open_until, opened_at, streak)
