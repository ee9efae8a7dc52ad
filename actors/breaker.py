"""Circuit breaker actor: one breaker per upstream (or ``"upstream/operation"``) key.

Card
- owns: one ``BreakerMachine`` per key (the pure machine in breaker_state.py) and the published
  snapshot ``board.snapshot`` (key -> ``BreakerView``, replaced wholesale; the actor is the only
  writer). Keys of the configured policies are loaded at start; others on first use.
- receives: ``_Acquire`` (ask; only for a half-open probe slot or a key never seen),
  ``_Record`` (fire-and-forget outcome), ``_Force`` (ask), ``_Reconfigure`` (a wake-up: the new
  policies wait in a hand-over slot, applied first thing on the next wake).
- replies: ``Ticket`` or ``BreakerOpenRefusal`` to ``_Acquire``; the new ``BreakerView`` to
  ``_Force``.
- sends to: ``persist(key, record)`` once per key per wake that changed its state (fire-and-
  forget into the storage writer); structlog events breaker.opened (alert), breaker.half_open,
  breaker.closed, breaker.forced, breaker.restored.
- on cancellation: the inbox closes; asks still queued fail with ``ActorStopped``; later asks
  raise ``ActorStopped`` at once; later records are dropped (counted). Acquire answers from the
  snapshot keep working (the pipeline may still drain).
- on failure: a ``load`` that raises or returns a malformed record is logged
  (breaker.restore_failed) and the breaker starts closed; a ``persist`` that raises is logged
  (breaker.persist_failed, alert) and the breaker goes on in memory.

Request path: ``acquire_nowait`` answers closed / forced-closed / disabled breakers with a
shared ticket and open / forced-open / full half-open ones with ``BreakerOpenRefusal``, straight
from the snapshot, with no ask and no checkpoint (``check`` applies the same refusal, taking
nothing); ``record`` is ``send_nowait`` (a full inbox drops the outcome and counts it; a
dropped probe outcome is caught by ``probe_timeout``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
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
    decide_from_view,
    policy_for,
    view_to_wire,
)
from claykiln.actors.errors import BadRequestRefusal, BreakerOpenRefusal
from claykiln.actors.log import alert, get_logger
from claykiln.actors.mailbox import ActorStopped, Mailbox, Reply

__all__ = [
    "BREAKER_INBOX_SIZE",
    "BreakerBoard",
    "BreakerPolicy",
    "BreakerState",
    "BreakerView",
    "ForceCommand",
    "LoadFn",
    "Outcome",
    "PersistFn",
    "Ticket",
]

BREAKER_INBOX_SIZE = 1024
_COMMANDS = ("open", "closed", "disabled", "reset")
log = get_logger("claykiln.breaker")


class PersistFn(Protocol):
    def __call__(self, key: str, record: dict[str, Any], /) -> None: ...


class LoadFn(Protocol):
    def __call__(self, key: str, /) -> dict[str, Any] | None: ...


@attrs.frozen(eq=False)
class _Acquire:
    key: str
    reply: Reply[Ticket]


@attrs.frozen(eq=False)
class _Record:
    ticket: Ticket
    outcome: Outcome
    duration: float


@attrs.frozen(eq=False)
class _Force:
    key: str
    command: ForceCommand
    reply: Reply[BreakerView]


@attrs.frozen(eq=False)
class _Reconfigure:
    """Wake the actor to apply the policies waiting in the board's hand-over slot."""


_Message = _Acquire | _Record | _Force | _Reconfigure


def _rejection_error(rejection: Rejection) -> BreakerOpenRefusal:
    state = rejection.state.value
    if rejection.retry_after is None:
        msg = f"breaker {rejection.key!r} is {state}; calls are refused until it is reset"
    else:
        msg = f"breaker {rejection.key!r} is {state}; retry in {rejection.retry_after:.3f} s"
    details = {"breaker": rejection.key, "state": state}
    return BreakerOpenRefusal(msg, retry_after=rejection.retry_after, details=details)


class BreakerBoard:
    """Every breaker of the daemon behind one actor; see the module card for the contract."""

    def __init__(
        self,
        policies: Mapping[str, BreakerPolicy],
        default: BreakerPolicy,
        *,
        persist: PersistFn,
        load: LoadFn,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._wall_clock = wall_clock
        self._mailbox: Mailbox[_Message] = Mailbox("breaker", BREAKER_INBOX_SIZE)
        self._state = _BreakersState(dict(policies), default, persist, load, wall_clock)
        self._pending_config: tuple[Mapping[str, BreakerPolicy], BreakerPolicy] | None = None
        self._snapshot: Mapping[str, BreakerView] = MappingProxyType({})
        self._started = False
        self._dropped_records = 0

    # -- request path (any task) ---------------------------------------------------------
    @property
    def snapshot(self) -> Mapping[str, BreakerView]:
        """Key -> view, immutable, replaced wholesale by the actor after each wake."""
        return self._snapshot

    def check(self, key: str) -> None:
        """Raise ``BreakerOpenRefusal`` if the snapshot says ``key`` refuses calls; take nothing."""
        self.acquire_nowait(key)

    def acquire_nowait(self, key: str) -> Ticket | None:
        """A ticket or ``BreakerOpenRefusal`` from the snapshot; None when the actor must decide."""
        view = self._snapshot.get(key)
        if view is None:
            return None
        if view.ticket is not None:
            return view.ticket
        decided = decide_from_view(view, trio.current_time())
        if isinstance(decided, Rejection):
            raise _rejection_error(decided)
        return decided

    async def acquire(self, key: str) -> Ticket:
        """Permission for one call to ``key``; raises ``BreakerOpenRefusal`` (retry_after: seconds).

        Answered from the snapshot without a checkpoint unless a half-open probe slot (or a key
        never seen) needs the actor. Cancelled while waiting for the actor: no probe slot is
        kept (a ticket granted meanwhile is released as IGNORED).
        """
        ticket = self.acquire_nowait(key)
        if ticket is not None:
            return ticket
        reply: Reply[Ticket] = Reply()
        try:
            return await self._mailbox.ask(_Acquire(key, reply), reply)
        except BaseException:
            if not reply.done:
                reply.fail(ActorStopped("the asker gave up"))  # the actor skips done slots
            else:
                try:
                    granted = reply.result()
                except Exception:
                    pass  # a refusal: nothing was granted
                else:
                    self.record(granted, Outcome.IGNORED, 0.0)
            raise

    def record(self, ticket: Ticket, outcome: Outcome, duration: float) -> None:
        """Report a call's outcome and duration (seconds); never blocks, never raises."""
        if not ticket.counted or (outcome is Outcome.IGNORED and not ticket.probe):
            return
        if not self._mailbox.tell(_Record(ticket, outcome, duration)):
            self._dropped_records += 1

    async def force(self, key: str, state: ForceCommand) -> BreakerView:
        """Operator override (open, closed, disabled) or ``reset`` to closed; the new view."""
        if state not in _COMMANDS:
            msg = f"unknown breaker state {state!r}; use one of {', '.join(_COMMANDS)}"
            raise BadRequestRefusal(msg)
        reply: Reply[BreakerView] = Reply()
        return await self._mailbox.ask(_Force(key, state, reply), reply)

    def reconfigure(self, policies: Mapping[str, BreakerPolicy], default: BreakerPolicy) -> None:
        """New policies (SIGHUP): applied at the actor's next wake; states are kept."""
        self._pending_config = (dict(policies), default)
        try:
            self._mailbox.post_nowait(_Reconfigure())
        except (trio.WouldBlock, ActorStopped):
            pass  # a full inbox wakes the actor anyway; a stopped one has nothing to apply

    def views(self) -> list[dict[str, Any]]:
        """``breaker.list``: one msgpack-able dict per breaker, sorted by key; wall-clock times."""
        now, wall_now = trio.current_time(), self._wall_clock()
        return [view_to_wire(view, now, wall_now) for _, view in sorted(self._snapshot.items())]

    def stats(self) -> dict[str, Any]:
        """For ``status``: state per key, how many refuse calls (open, half-open, forced open)
        and the counters (asks, dropped / stale records, persist failures)."""
        states = {key: view.state.value for key, view in self._snapshot.items()}
        return {
            "breakers": states,
            "open": sum(1 for s in states.values() if s in ("open", "half_open", "forced_open")),
            "asks": self._state.asks,
            "records_dropped": self._dropped_records,
            "records_stale": self._state.stale_records,
            "persist_failures": self._state.persist_failures,
            "running": not self._mailbox.stopped,
        }

    # -- the actor -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore the configured breakers, publish, then serve until cancelled (once only)."""
        if self._started:
            msg = "BreakerBoard.run was already started; make a new board to restart"
            raise RuntimeError(msg)
        self._started = True
        state = self._state
        batch: list[_Message] = []
        try:
            now = trio.current_time()
            state.load_configured(now)
            self._publish(now)
            task_status.started()
            while True:
                batch = []
                with trio.move_on_at(state.next_deadline()):
                    batch = await self._mailbox.drain()
                now = trio.current_time()
                pending, self._pending_config = self._pending_config, None
                if pending is not None:
                    state.reconfigure(*pending, now)
                state.tick_due(now)
                for message in batch:
                    state.handle(message, now)
                self._publish(now)
        finally:
            self._mailbox.stop(batch)

    def _publish(self, now: float) -> None:
        """Log and persist what changed in this wake, then publish the new snapshot."""
        changed = self._state.finish_wake(now)
        if changed:
            self._snapshot = MappingProxyType({**self._snapshot, **changed})


@attrs.define
class _BreakersState:
    """Everything the breaker task owns; only that task touches it (no awaits here)."""

    policies: Mapping[str, BreakerPolicy]
    default: BreakerPolicy
    persist: PersistFn
    load: LoadFn
    wall_clock: Callable[[], float]
    machines: dict[str, BreakerMachine] = attrs.Factory(dict)
    changed: set[str] = attrs.Factory(set)
    asks: int = 0
    stale_records: int = 0
    persist_failures: int = 0

    def load_configured(self, now: float) -> None:
        """Create (and restore) the machine of every configured key."""
        for key in self.policies:
            self.machine(key, now)

    def handle(self, message: _Message, now: float) -> None:
        """Apply one message (a ``_Reconfigure`` only woke the actor: nothing to do)."""
        if isinstance(message, _Record):
            machine = self.machines.get(message.ticket.key)
            counted = machine is not None and machine.record(
                message.ticket, message.outcome, message.duration, now
            )
            if counted:
                self.changed.add(message.ticket.key)
            else:
                self.stale_records += 1
        elif isinstance(message, _Acquire):
            self.asks += 1
            if message.reply.done:
                return  # the asker gave up: take no probe slot for it
            machine = self.machine(message.key, now)
            decided = machine.acquire(now)
            self.changed.add(message.key)
            if isinstance(decided, Rejection):
                message.reply.fail(_rejection_error(decided))
            else:
                message.reply.set(decided)
        elif isinstance(message, _Force):
            self.asks += 1
            machine = self.machine(message.key, now)
            machine.force(message.command, now)
            self.changed.add(message.key)
            message.reply.set(machine.view(now))

    def machine(self, key: str, now: float) -> BreakerMachine:
        """The machine of ``key``, created (and restored from ``load``) on first use."""
        machine = self.machines.get(key)
        if machine is not None:
            return machine
        policy = policy_for(key, self.policies, self.default)
        machine = BreakerMachine(key, policy)
        self.machines[key] = machine
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
                _log_transition(transition, machine)
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


def _log_transition(t: Transition, machine: BreakerMachine) -> None:
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
            retry_after=machine.policy.reset_timeout,
            **fields,
        )
    elif t.after is BreakerState.HALF_OPEN:
        log.info("breaker.half_open", **fields)
    elif t.after is BreakerState.CLOSED:
        # An alert (the all-clear for breaker.opened) so it passes any log level.
        alert(log, "breaker.closed", severity="info", **fields)
