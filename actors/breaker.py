"""Circuit breaker actor: one breaker per key (an upstream, ``"upstream/operation"`` or a name).

Card
- owns: a ``BreakerBook`` (breaker_book.py: one ``BreakerMachine`` per key, the pure machine of
  breaker_state.py, and an opening event per key) and the published snapshot
  ``board.snapshot`` (key -> ``BreakerView``, replaced wholesale; the actor is the only writer).
  Keys of the configured policies are loaded at start; others on first use.
- receives: ``_Acquire`` (ask; only for a half-open probe slot or a key never seen),
  ``_Record`` (fire-and-forget outcome), ``_Settle`` (ask: a probe's outcome, then a ticket for
  the caller's own call), ``_Force`` (ask), ``_Reconfigure`` (a wake-up: the new policies wait
  in a hand-over slot, applied first thing on the next wake).
- replies: ``Ticket`` or ``BreakerOpenRefusal`` to ``_Acquire`` and ``_Settle``; the new
  ``BreakerView`` to ``_Force``.
- sends to: ``persist(key, record)`` once per key per wake that changed its state (fire-and-
  forget into the storage writer); structlog events breaker.opened (alert), breaker.half_open,
  breaker.closed (alert), breaker.forced, breaker.restored.
- publishes: the snapshot, and ``opening(key)``: an Event set when ``key`` opens, which a caller
  waiting in retry backoff watches (an opening cuts the wait short: it gets ``breaker_open``).
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
dropped probe outcome is caught by ``probe_timeout``). A probe ticket that names a
``probe_operation`` asks its caller to make that call first and report it with
``settle_probe``, instead of risking its own request on a doubtful upstream.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import trio

from claykiln.actors.breaker_book import BreakerBook, LoadFn, PersistFn
from claykiln.actors.breaker_types import (
    BreakerPolicy,
    BreakerState,
    BreakerView,
    ForceCommand,
    Outcome,
    Rejection,
    Ticket,
    decide_from_view,
    view_to_wire,
)
from claykiln.actors.errors import BadRequestRefusal, BreakerOpenRefusal
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
class _Settle:
    """A probe's outcome, and the ask for the caller's own ticket right after it."""

    probe: Ticket
    outcome: Outcome
    duration: float
    reply: Reply[Ticket]


@attrs.frozen(eq=False)
class _Force:
    key: str
    command: ForceCommand
    reply: Reply[BreakerView]


@attrs.frozen(eq=False)
class _Reconfigure:
    """Wake the actor to apply the policies waiting in the board's hand-over slot."""


_Message = _Acquire | _Record | _Settle | _Force | _Reconfigure


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
        rng: random.Random | None = None,
    ) -> None:
        self._wall_clock = wall_clock
        self._mailbox: Mailbox[_Message] = Mailbox("breaker", BREAKER_INBOX_SIZE)
        self._state = BreakerBook(
            dict(policies), default, persist, load, wall_clock, rng or random.Random()
        )
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
        return await self._ask_ticket(_Acquire(key, reply), reply)

    async def settle_probe(self, probe: Ticket, outcome: Outcome, duration: float) -> Ticket:
        """Report the outcome of a probe made with ``probe.probe_operation``, then acquire for
        the caller's own call, in one ask (so the answer already knows the verdict).

        Returns a ticket (the breaker closed, or another probe of the round) or raises
        ``BreakerOpenRefusal`` (the probe failed, or the round is still open). Cancelled, the
        outcome is still reported (told; stale and ignored if the ask was applied).
        """
        reply: Reply[Ticket] = Reply()
        try:
            return await self._ask_ticket(_Settle(probe, outcome, duration, reply), reply)
        except trio.Cancelled:
            self.record(probe, outcome, duration)
            raise

    async def _ask_ticket(self, message: _Acquire | _Settle, reply: Reply[Ticket]) -> Ticket:
        """Ask for a ticket; an asker that gives up keeps no slot: an unanswered ask is marked
        (the actor skips it), a ticket granted meanwhile is released as IGNORED."""
        try:
            return await self._mailbox.ask(message, reply)
        except BaseException:
            if not reply.done:
                reply.fail(ActorStopped("the asker gave up"))
            else:
                try:
                    granted = reply.result()
                except Exception:
                    pass  # a refusal: nothing was granted
                else:
                    self.record(granted, Outcome.IGNORED, 0.0)
            raise

    def opening(self, key: str) -> trio.Event:
        """An Event set the next time ``key`` opens (or is forced open): what a caller waiting
        in backoff watches, so an opening cuts its wait short. Never set for a key never seen."""
        opening = self._state.openings.get(key)
        return trio.Event() if opening is None else opening

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
                    _handle(state, message, now)
                self._publish(now)
        finally:
            self._mailbox.stop(batch)

    def _publish(self, now: float) -> None:
        """Log and persist what changed in this wake, then publish the new snapshot."""
        changed = self._state.finish_wake(now)
        if changed:
            self._snapshot = MappingProxyType({**self._snapshot, **changed})


def _handle(book: BreakerBook, message: _Message, now: float) -> None:
    """Apply one message and answer its slot (a ``_Reconfigure`` only woke the actor)."""
    if isinstance(message, _Record):
        book.record(message.ticket, message.outcome, message.duration, now)
        return
    if isinstance(message, _Reconfigure):
        return
    book.asks += 1
    if isinstance(message, _Force):
        message.reply.set(book.force(message.key, message.command, now))
        return
    if isinstance(message, _Settle):
        book.record(message.probe, message.outcome, message.duration, now)
        key = message.probe.key
    else:
        key = message.key
    if message.reply.done:
        return  # the asker gave up: take no (probe) ticket for it
    decided = book.acquire(key, now)
    if isinstance(decided, Rejection):
        message.reply.fail(_rejection_error(decided))
    else:
        message.reply.set(decided)
