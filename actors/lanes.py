"""Bulkhead lanes: named concurrency limits, each with a bounded FIFO queue and a max wait.

Card
- owns: one ``LaneBook`` per lane (holders, the FIFO of waiters, counters, a hold-time average).
- receives: ``_Enter`` (ask: a slot; the message itself is the caller's ticket), ``_Leave``
  (fire-and-forget: release a slot or withdraw from the queue, with the outcome to count),
  ``_Refused`` (fire-and-forget: a fast-path rejection to count; ``stats`` shows it after the
  actor's next pass, not at once), ``_Reconfigure`` (ask).
- replies: ``_Enter`` -> None when the slot is the caller's (at once, or when a holder leaves and
  the caller is the oldest live waiter), or ``LaneFullRefusal`` / ``BadRequestRefusal``.
- sends to: nobody.
- publishes: ``Lanes.views``, a ``Mapping[str, LaneView]`` replaced wholesale after every batch;
  a full lane is refused from it without an ask.
- on cancellation / on failure: the inbox closes; queued callers and unanswered asks fail with
  ``ActorStopped``; later asks raise it at once; releases to a stopped actor are no-ops.

Waiting is timed by the caller, not the actor: a queued caller waits on its reply slot until
min(queued_at + max_wait, deadline), then withdraws (``_Leave``) and raises ``LaneFullRefusal`` or
``TimeoutRefusal``. The actor skips waiters whose time is up when it hands a slot on, and a
withdrawal that crosses a grant releases the granted slot, so no slot is ever lost.

The admission decisions (``LanePolicy``, ``LaneBook``, ``LaneView``, ``retry_hint``) are pure
and live in ``claykiln.actors.lanes_book``; their names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import TracebackType
from typing import Any, cast

import attrs
import trio

from claykiln.actors.errors import BadRequestRefusal, LaneFullRefusal, Refusal, TimeoutRefusal
from claykiln.actors.lanes_book import (
    DEFAULT_LANES,
    HOLD_SMOOTHING,
    MIN_RETRY_HINT,
    LaneBook,
    LanePolicy,
    LaneView,
    retry_hint,
)
from claykiln.actors.log import alert, get_logger
from claykiln.actors.mailbox import ActorStopped, Mailbox, Reply

__all__ = [
    "DEFAULT_LANES",
    "HOLD_SMOOTHING",
    "LANES_INBOX_SIZE",
    "LEAVE_GRACE",
    "MIN_RETRY_HINT",
    "LaneBook",
    "LanePolicy",
    "LaneSlot",
    "LaneView",
    "Lanes",
    "retry_hint",
]

log = get_logger("claykiln.lanes")

LANES_INBOX_SIZE = 4096
"""Bound of the lanes actor's inbox."""

LEAVE_GRACE = 1.0
"""Seconds a release may wait (shielded) for room in a full inbox before it is counted lost."""


@attrs.frozen(eq=False)
class _Enter:
    lane: str
    expires_at: float
    reply: Reply[None]


@attrs.frozen
class _Leave:
    ticket: _Enter
    outcome: str  # released | cancelled | max_wait | timeout


@attrs.frozen
class _Refused:
    lane: str


@attrs.frozen(eq=False)
class _Reconfigure:
    policies: Mapping[str, LanePolicy]
    reply: Reply[None]


_Message = _Enter | _Leave | _Refused | _Reconfigure


def _lane_full(name: str, reason: str, hint: float) -> LaneFullRefusal:
    if reason == "queue_full":
        msg = f"lane {name!r} is full (every slot busy, queue full); retry in {hint:.3f} s"
    else:
        msg = f"lane {name!r} had no free slot within its max wait; retry in {hint:.3f} s"
    return LaneFullRefusal(msg, retry_after=hint, details={"lane": name, "reason": reason})


def _unknown_lane(name: str, live: list[str]) -> BadRequestRefusal:
    names = ", ".join(sorted(live)) or "(none)"
    msg = f"unknown lane {name!r}; configured lanes: {names}"
    return BadRequestRefusal(msg, details={"lane": name, "lanes": sorted(live)})


class LaneSlot:
    """``async with lanes.slot(name, deadline):`` holds one slot of the lane for the body.

    Enter raises ``LaneFullRefusal`` (queue full: at once; no slot within max_wait),
    ``TimeoutRefusal`` (details.stage = "lane": the deadline passed first), ``BadRequestRefusal``
    (unknown lane) or ``ActorStopped``. Cancelled while queued, it withdraws; exit always releases
    the slot.
    """

    __slots__ = ("_deadline", "_lanes", "_name", "_ticket")

    def __init__(self, lanes: Lanes, name: str, deadline: float | None) -> None:
        self._lanes, self._name, self._deadline = lanes, name, deadline
        self._ticket: _Enter | None = None

    async def __aenter__(self) -> None:
        self._ticket = await self._lanes._enter(self._name, self._deadline)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            await self._lanes._leave(ticket, "released")


class Lanes:
    """The bulkheads. Start with ``await nursery.start(lanes.run)``; enter with ``slot``."""

    def __init__(self, policies: Mapping[str, LanePolicy] = DEFAULT_LANES) -> None:
        self._mailbox: Mailbox[_Message] = Mailbox("lanes", LANES_INBOX_SIZE)
        self._state = _LanesState({name: LaneBook(p) for name, p in policies.items()})
        self._views: Mapping[str, LaneView] = {}
        self.lost_releases = 0  # releases that found no room within LEAVE_GRACE (should stay 0)

    @property
    def dropped(self) -> int:
        """Refusal notices dropped because the inbox was full."""
        return self._mailbox.dropped

    @property
    def views(self) -> Mapping[str, LaneView]:
        """The latest snapshot, one view per lane (retired lanes until their last caller left)."""
        return self._views

    def slot(self, name: str, deadline: float | None) -> LaneSlot:
        """An async context manager holding one slot of lane ``name`` (see ``LaneSlot``)."""
        return LaneSlot(self, name, deadline)

    async def reconfigure(self, policies: Mapping[str, LanePolicy]) -> None:
        """Replace the lanes; returns once applied.

        A lane that grows admits waiters at once; one that shrinks lets its holders finish and
        admits again when below the new limit; a removed lane refuses new entries while its
        holders and waiters finish.
        """
        reply: Reply[None] = Reply()
        await self._mailbox.ask(_Reconfigure(dict(policies), reply), reply)

    def stats(self) -> dict[str, Any]:
        """Plain values for the ``status`` RPC, read from the snapshot."""
        return {
            "lanes": {name: view.stats() for name, view in self._views.items()},
            "dropped_notices": self.dropped,
            "lost_releases": self.lost_releases,
        }

    def check(self, name: str) -> None:
        """Refuse at once when the snapshot shows the lane's queue full (no ask, no await).

        For the request path's fail-fast precheck; ``slot`` re-checks on entry anyway.
        """
        view = self._views.get(name)
        if view is not None and not view.retired and view.full:
            self._mailbox.tell(_Refused(name))
            raise _lane_full(name, "queue_full", retry_hint(view.hold, view.queued, view.policy))

    async def _enter(self, name: str, deadline: float | None) -> _Enter:
        now = trio.current_time()
        view = self._views.get(name)
        if view is None or view.retired:
            raise _unknown_lane(name, [n for n, v in self._views.items() if not v.retired])
        if view.full:
            self._mailbox.tell(_Refused(name))
            raise _lane_full(name, "queue_full", retry_hint(view.hold, view.queued, view.policy))
        wait_until = now + view.policy.max_wait
        timed_out_reason = "max_wait"
        if deadline is not None and deadline < wait_until:
            wait_until, timed_out_reason = deadline, "timeout"
        ticket = _Enter(name, wait_until, Reply())
        await self._mailbox.post(ticket)
        try:
            with trio.move_on_at(wait_until) as scope:
                await ticket.reply.wait()
        except (Refusal, ActorStopped):
            raise  # refused by the actor: nothing to give back
        except BaseException:
            await self._leave(ticket, "cancelled")
            raise
        if scope.cancelled_caught:
            if ticket.reply.done:  # granted just as the wait ran out
                ticket.reply.result()
                return ticket
            await self._leave(ticket, timed_out_reason)
            if timed_out_reason == "timeout":
                msg = f"the call's deadline passed while queued for lane {name!r}"
                raise TimeoutRefusal(msg, details={"stage": "lane", "lane": name})
            latest = self._views.get(name, view)
            raise _lane_full(name, "max_wait", retry_hint(latest.hold, latest.queued, view.policy))
        return ticket

    async def _leave(self, ticket: _Enter, outcome: str) -> None:
        """Release or withdraw; never dropped: on a full inbox wait (shielded) up to LEAVE_GRACE."""
        message = _Leave(ticket, outcome)
        try:
            self._mailbox.post_nowait(message)
            return
        except trio.WouldBlock:
            pass
        except ActorStopped:
            return  # nothing left to release
        with trio.CancelScope(shield=True, deadline=trio.current_time() + LEAVE_GRACE) as scope:
            try:
                await self._mailbox.post(message)
            except ActorStopped:
                return
        if scope.cancelled_caught:
            self.lost_releases += 1
            alert(log, "lane.release_lost", severity="critical", level="error", lane=ticket.lane)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The actor loop: publish, then serve until cancelled."""
        state = self._state
        batch: list[_Message] = []
        try:
            self._views = {name: book.view(name) for name, book in state.books.items()}
            task_status.started()
            while True:
                batch = await self._mailbox.drain()
                now = trio.current_time()
                changed = {state.handle(msg, now) for msg in batch}
                if state.drop_finished() or None in changed:
                    self._views = {name: b.view(name) for name, b in state.books.items()}
                else:
                    fresh = {n: state.books[n].view(n) for n in changed if n in state.books}
                    self._views = {**self._views, **fresh}
        finally:
            # Queued callers hold _Enter tickets whose slots were never granted: fail them too.
            waiting = [cast(_Enter, t) for book in state.books.values() for t in book.waiters]
            self._mailbox.stop([*batch, *waiting])


@attrs.define
class _LanesState:
    """Everything the lanes task owns; only that task touches it (no awaits here)."""

    books: dict[str, LaneBook]

    def drop_finished(self) -> bool:
        """Forget retired lanes nobody holds or waits in any more; True if any went."""
        done = [n for n, b in self.books.items() if b.retired and not (b.holders or b.waiters)]
        for name in done:
            del self.books[name]
        return bool(done)

    def handle(self, msg: _Message, now: float) -> str | None:
        """Apply one message; the lane whose view changed (None: every lane)."""
        if isinstance(msg, _Enter):
            book = self.books.get(msg.lane)
            if book is None or book.retired:
                live = [n for n, b in self.books.items() if not b.retired]
                msg.reply.fail(_unknown_lane(msg.lane, live))
                return None
            decision = book.enter(msg, msg.expires_at, now)
            if decision == "granted":
                msg.reply.set(None)
            elif decision == "full":
                hint = retry_hint(book.hold, len(book.waiters), book.policy)
                msg.reply.fail(_lane_full(msg.lane, "queue_full", hint))
                log.debug("lane.rejected", lane=msg.lane, reason="queue_full")
            return msg.lane
        if isinstance(msg, _Leave):
            book = self.books.get(msg.ticket.lane)
            if book is not None:
                _grant(book.leave(msg.ticket, msg.outcome, now))
            if msg.outcome in ("max_wait", "timeout"):
                log.debug("lane.rejected", lane=msg.ticket.lane, reason=msg.outcome)
            return msg.ticket.lane
        if isinstance(msg, _Refused):
            if msg.lane in self.books:
                self.books[msg.lane].rejected += 1
            log.debug("lane.rejected", lane=msg.lane, reason="queue_full")
            return msg.lane
        for name, book in self.books.items():
            book.retired = name not in msg.policies
        for name, policy in msg.policies.items():
            book = self.books.setdefault(name, LaneBook(policy))
            book.policy = policy
            _grant(book.hand_on(now))
        msg.reply.set(None)
        return None


def _grant(tickets: list[Hashable]) -> None:
    for ticket in tickets:
        cast(_Enter, ticket).reply.set(None)
