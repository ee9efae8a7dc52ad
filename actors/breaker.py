"""Circuit breaker actor: one breaker per upstream (or ``"upstream/operation"``) key.

Card
- owns: one ``BreakerMachine`` per key (the pure machine in breaker_state.py) and the published
  snapshot ``board.snapshot`` (key -> ``BreakerView``, replaced wholesale; the actor is the only
  writer). Keys of the configured policies are loaded at start; others on first use.
- receives: ``Acquire`` (ask; only for a half-open probe slot or a key never seen), ``Record``
  (fire-and-forget outcome), ``Force`` (ask), ``Reconfigure`` (a wake-up: the new policies wait
  in a hand-over slot, applied first thing on the next wake).
- replies: ``Ticket`` or ``BreakerOpenRefusal`` to ``Acquire``; the new ``BreakerView`` to
  ``Force``.
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
from claykiln.actors.log import get_logger
from claykiln.actors.mailbox import ActorStopped, Reply, drain, fail_pending

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
class Acquire:
    key: str
    reply: Reply[Ticket]


@attrs.frozen(eq=False)
class Record:
    ticket: Ticket
    outcome: Outcome
    duration: float


@attrs.frozen(eq=False)
class Force:
    key: str
    command: ForceCommand
    reply: Reply[BreakerView]


@attrs.frozen(eq=False)
class Reconfigure:
    """Wake the actor to apply the policies waiting in the board's hand-over slot."""


Message = Acquire | Record | Force | Reconfigure


@attrs.define
class _BoardState:
    """Touched only by the actor task."""

    policies: Mapping[str, BreakerPolicy]
    default: BreakerPolicy
    machines: dict[str, BreakerMachine] = attrs.Factory(dict)
    changed: set[str] = attrs.Factory(set)
    asks: int = 0
    stale_records: int = 0
    persist_failures: int = 0


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
        self._persist = persist
        self._load = load
        self._wall_clock = wall_clock
        self._send, self._receive = trio.open_memory_channel[Message](BREAKER_INBOX_SIZE)
        self._state = _BoardState(dict(policies), default)
        self._pending_config: tuple[Mapping[str, BreakerPolicy], BreakerPolicy] | None = None
        self._snapshot: Mapping[str, BreakerView] = MappingProxyType({})
        self._started = self._stopped = False
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
        await self._ask(Acquire(key, reply))
        try:
            return await reply.wait()
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
        try:
            self._send.send_nowait(Record(ticket, outcome, duration))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._dropped_records += 1

    async def force(self, key: str, state: ForceCommand) -> BreakerView:
        """Operator override (open, closed, disabled) or ``reset`` to closed; the new view."""
        if state not in _COMMANDS:
            msg = f"unknown breaker state {state!r}; use one of {', '.join(_COMMANDS)}"
            raise BadRequestRefusal(msg)
        reply: Reply[BreakerView] = Reply()
        await self._ask(Force(key, state, reply))
        return await reply.wait()

    def reconfigure(self, policies: Mapping[str, BreakerPolicy], default: BreakerPolicy) -> None:
        """New policies (SIGHUP): applied at the actor's next wake; states are kept."""
        self._pending_config = (dict(policies), default)
        try:
            self._send.send_nowait(Reconfigure())
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
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
            "running": not self._stopped,
        }

    async def _ask(self, message: Acquire | Force) -> None:
        if self._stopped:
            msg = "the breaker actor stopped"
            raise ActorStopped(msg)
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            msg = "the breaker actor stopped"
            raise ActorStopped(msg) from None

    # -- the actor -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore the configured breakers, publish, then serve until cancelled (once only)."""
        if self._started:
            msg = "BreakerBoard.run was already started; make a new board to restart"
            raise RuntimeError(msg)
        self._started = True
        now = trio.current_time()
        for key in self._state.policies:
            self._machine(key, now)
        self._finish_wake(now)
        task_status.started()
        try:
            while True:
                batch: list[Message] = []
                with trio.move_on_at(self._next_deadline()):
                    batch = await drain(self._receive)
                now = trio.current_time()
                self._apply_pending_config(now)
                self._tick_due(now)
                for message in batch:
                    self._handle(message, now)
                self._finish_wake(now)
        finally:
            self._stopped = True
            leftovers: list[Reply[Any]] = []
            while True:
                try:
                    message = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                if isinstance(message, Acquire | Force):
                    leftovers.append(message.reply)
            self._receive.close()
            fail_pending(leftovers, "breaker")

    def _handle(self, message: Message, now: float) -> None:
        state = self._state
        if isinstance(message, Record):
            machine = state.machines.get(message.ticket.key)
            counted = machine is not None and machine.record(
                message.ticket, message.outcome, message.duration, now
            )
            if counted:
                state.changed.add(message.ticket.key)
            else:
                state.stale_records += 1
        elif isinstance(message, Acquire):
            state.asks += 1
            if message.reply.done:
                return  # the asker gave up: take no probe slot for it
            machine = self._machine(message.key, now)
            decided = machine.acquire(now)
            state.changed.add(message.key)
            if isinstance(decided, Rejection):
                message.reply.fail(_rejection_error(decided))
            else:
                message.reply.set(decided)
        elif isinstance(message, Force):
            state.asks += 1
            machine = self._machine(message.key, now)
            machine.force(message.command, now)
            state.changed.add(message.key)
            message.reply.set(machine.view(now))

    def _machine(self, key: str, now: float) -> BreakerMachine:
        """The machine of ``key``, created (and restored from ``load``) on first use."""
        machine = self._state.machines.get(key)
        if machine is not None:
            return machine
        policy = policy_for(key, self._state.policies, self._state.default)
        machine = BreakerMachine(key, policy)
        self._state.machines[key] = machine
        self._state.changed.add(key)
        try:
            record = self._load(key)
            if record is not None:
                restored = restore_from_record(record, policy, now, self._wall_clock())
                machine.restore(restored, now)
                log.info("breaker.restored", key=key, state=machine.state.value)
        except Exception as exc:
            log.warning("breaker.restore_failed", key=key, error=repr(exc))
        return machine

    def _apply_pending_config(self, now: float) -> None:
        pending, self._pending_config = self._pending_config, None
        if pending is None:
            return
        state = self._state
        state.policies, state.default = pending
        for key, machine in state.machines.items():
            machine.reconfigure(policy_for(key, state.policies, state.default), now)
            state.changed.add(key)
        for key in state.policies:
            self._machine(key, now)
        log.info("breaker.reconfigured", keys=sorted(state.policies))

    def _tick_due(self, now: float) -> None:
        for key, machine in self._state.machines.items():
            deadline = machine.next_deadline()
            if deadline is not None and deadline <= now:
                machine.tick(now)
                self._state.changed.add(key)

    def _next_deadline(self) -> float:
        deadlines = [m.next_deadline() for m in self._state.machines.values()]
        return min((d for d in deadlines if d is not None), default=math.inf)

    def _finish_wake(self, now: float) -> None:
        """Log and persist what changed, then publish the new snapshot."""
        state = self._state
        if not state.changed:
            return
        views = dict(self._snapshot)
        wall_now = self._wall_clock()
        for key in state.changed:
            machine = state.machines[key]
            transitions = machine.take_transitions()
            for transition in transitions:
                _log_transition(transition, machine)
            if transitions:
                self._persist_machine(machine, now, wall_now)
            views[key] = machine.view(now)
        state.changed.clear()
        self._snapshot = MappingProxyType(views)

    def _persist_machine(self, machine: BreakerMachine, now: float, wall_now: float) -> None:
        try:
            self._persist(machine.key, to_record(machine, now, wall_now))
        except Exception as exc:
            self._state.persist_failures += 1
            log.error(
                "breaker.persist_failed",
                key=machine.key,
                error=repr(exc),
                alert=True,
                severity="warning",
            )


def _log_transition(t: Transition, machine: BreakerMachine) -> None:
    fields = {"key": t.key, "previous": t.before.value, "reason": t.reason}
    if t.reason.startswith("forced_"):
        log.warning("breaker.forced", state=t.after.value, **fields)
    elif t.after is BreakerState.OPEN:
        log.warning(
            "breaker.opened",
            alert=True,
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
        log.info("breaker.closed", alert=True, severity="info", **fields)
