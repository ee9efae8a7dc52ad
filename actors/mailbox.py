"""The plumbing every actor shares: a bounded inbox, cheap reply slots, drain-per-wake.

Contract, for an actor written on it (breaker, gate, lanes, writer, and those to come):

- ``Mailbox[M]`` is the actor's only inbox: a bounded memory channel of messages ``M``.
  Asking tasks ``ask`` (queue a message carrying a ``Reply`` and await the answer) or ``post``
  it (queue, waiting for room, and await the reply themselves); both raise ``ActorStopped`` once
  the mailbox is closed or stopped. Tasks that only tell ``tell`` (``send_nowait``: never
  blocks, never raises; a full inbox drops the message and counts it in ``dropped``).
- The actor loop calls ``drain``: it waits for one message, then takes everything else already
  queued, with no further scheduler pass; it raises ``trio.EndOfChannel`` once the mailbox is
  closed and empty.
- ``close`` (the owner's graceful stop) refuses new messages and lets the actor drain what is
  queued; ``stop`` (in the actor's ``finally``) refuses new messages, takes what is still
  queued and fails every unanswered reply slot among those and the messages the actor hands
  back, so no asker hangs.
- ``Reply[T]`` is a one-shot slot: a value or an exception, and the one task awaiting it.
  The actor calls ``set`` or ``fail`` once (later calls are ignored, so an asker that gave up
  can mark its own slot failed and the actor skips it); the asker awaits ``wait``.
  ``Then(done)`` is a slot nobody awaits: settling it calls ``done(None)`` or ``done(error)``
  in the actor's task.
- ``drain(receive)`` and ``fail_pending(replies, name)`` are the same two steps for an actor
  that keeps its own channel.
- ``ping`` is the liveness ask the health monitor makes (docs/alerting.md, "Health"): it
  returns once the actor is back at its inbox (waiting in ``drain`` now, or the next time it
  calls it), so an actor stuck anywhere else leaves it unanswered. It costs the actor nothing
  per message (one check per wake). An actor keeps its mailbox as ``_mailbox``, which
  ``mailbox_of`` reads.

Why this shape (measured, docs/architecture.md "Why the actors look like this"): a fresh memory
channel per ask costs ~3.2 us where an Event slot costs ~0.25 us, and an actor that handles one
message per wake pays a scheduler pass per request where one that drains its inbox brings a hop
to ~4 us. What the request path only reads is not asked at all: the owning actor publishes it as
an immutable snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import trio

__all__ = ["ActorStopped", "Mailbox", "Reply", "Then", "drain", "fail_pending", "mailbox_of"]

T = TypeVar("T")
M = TypeVar("M")


class ActorStopped(Exception):
    """The actor that owed this reply stopped (or was not running) before answering."""


class Reply(Generic[T]):
    """A one-shot answer slot; cheaper than a channel per ask, and than an Event: its one
    asker parks on the slot itself and ``set`` reschedules it directly (no parking lot)."""

    __slots__ = ("_error", "_ready", "_value", "_waiter")

    def __init__(self) -> None:
        self._ready = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self._waiter: trio.lowlevel.Task | None = None

    @property
    def done(self) -> bool:
        return self._ready

    def set(self, value: T) -> None:
        """Answer with ``value``; ignored if the slot is already done."""
        if not self._ready:
            self._value = value
            self._settle()

    def fail(self, error: BaseException) -> None:
        """Answer by raising ``error`` in the asker; ignored if the slot is already done."""
        if not self._ready:
            self._error = error
            self._settle()

    def _settle(self) -> None:
        self._ready = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    async def wait(self) -> T:
        """The value, or raise what the actor failed the slot with. A checkpoint, as
        ``trio.Event.wait`` is; one task at a time may wait (RuntimeError for a second)."""
        if self._ready:
            await trio.lowlevel.checkpoint()
        else:
            if self._waiter is not None:
                msg = "a Reply has one asker; another task is already waiting on it"
                raise RuntimeError(msg)
            self._waiter = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return self.result()

    def result(self) -> T:
        """The value of a completed slot (raise its error); only after ``done``."""
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Then(Reply[None]):
    """A slot that calls ``done`` (None, or the error) when settled instead of waking an asker
    (no Event: nobody waits on it). ``done`` runs in the actor's task: quick, never raising."""

    __slots__ = ("_done", "_settled")

    def __init__(self, done: Callable[[BaseException | None], None]) -> None:
        self._done = done
        self._settled = False

    @property
    def done(self) -> bool:
        return self._settled

    def set(self, value: None) -> None:
        if not self._settled:
            self._settled = True
            self._done(None)

    def fail(self, error: BaseException) -> None:
        if not self._settled:
            self._settled = True
            self._done(error)


class Mailbox(Generic[M]):
    """The bounded inbox of the actor ``name`` (see the module docstring for the contract)."""

    __slots__ = ("_back", "_receive", "_send", "_waiting", "_wedged", "dropped", "name", "stopped")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self._send, self._receive = trio.open_memory_channel[M](size)
        self.dropped = 0  # told messages lost to a full inbox (written by senders only)
        self.stopped = False
        self._waiting = False  # the actor is inside ``drain``, waiting for mail
        self._back: trio.Event | None = None  # set at the actor's next ``drain`` (pings)
        self._wedged = False  # test-only: see ``wedge``

    @property
    def queued(self) -> int:
        """Messages waiting in the inbox (not counting a batch the actor is handling)."""
        return self._send.statistics().current_buffer_used

    # -- senders (any task) ----------------------------------------------------------------
    async def ask(self, message: M, reply: Reply[T]) -> T:
        """Queue ``message`` (which carries ``reply``), then wait for the answer.

        Raises ``ActorStopped`` if the actor is not running, else what the actor failed the
        slot with. Cancelled while waiting, the slot stays unanswered: mark it with
        ``reply.fail`` if the actor must skip it.
        """
        await self.post(message)
        return await reply.wait()

    async def post(self, message: M) -> None:
        """Queue ``message``, waiting for room; raises ``ActorStopped`` if the actor is not
        running. Cancelled while waiting for room, nothing was queued."""
        if self.stopped:
            raise self._stopped_error()
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._stopped_error() from None

    def post_nowait(self, message: M) -> None:
        """Queue ``message`` at once; raises ``trio.WouldBlock`` when the inbox is full and
        ``ActorStopped`` when the actor is not running."""
        try:
            self._send.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._stopped_error() from None

    def tell(self, message: M) -> bool:
        """Queue ``message`` without waiting; never raises. False when it was not queued: the
        inbox was full (counted in ``dropped``) or the actor is not running."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += 1  # counted, not logged: a storm of drops must not flood the log
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def close(self) -> None:
        """Refuse new messages; the actor still drains what is queued (``drain`` then raises
        ``trio.EndOfChannel``). Idempotent."""
        self._send.close()

    async def ping(self) -> None:
        """The liveness ask: return once the actor is back at its inbox (see the module
        docstring). Raises ``ActorStopped`` if the actor stopped before that."""
        if self.stopped:
            raise self._stopped_error()
        if self._waiting:
            return
        if self._back is None:
            self._back = trio.Event()
        await self._back.wait()
        if self.stopped:
            raise self._stopped_error()

    def wedge(self) -> None:
        """Test-only (``KILN_TEST_WEDGE``, docs/operations.md): from now on the actor counts as
        hung: liveness asks go unanswered, and its next ``drain`` never returns (after the batch
        it may be waiting for), so asks queue up."""
        self._wedged = True
        self._waiting = False

    # -- the actor's side ------------------------------------------------------------------
    async def drain(self) -> list[M]:
        """Wait for one message, then take everything else already queued (no extra passes).

        Raises ``trio.EndOfChannel`` once the mailbox is closed and empty. Answers pending
        liveness asks (``ping``) on the way in.
        """
        if self._wedged:
            await trio.sleep_forever()
        back = self._back
        if back is not None:
            self._back = None
            back.set()
        self._waiting = True
        try:
            return await drain(self._receive)
        finally:
            self._waiting = False

    def stop(
        self,
        unhandled: Iterable[M] = (),
        *,
        error: Callable[[], BaseException] | None = None,
    ) -> list[M]:
        """The actor is done: refuse new messages and fail every unanswered reply slot.

        Looks at ``unhandled`` (what the actor took but did not answer) and at everything still
        queued; each message with an unanswered ``reply`` slot gets ``error()`` (by default
        ``ActorStopped`` naming the actor). Returns the messages whose slot it failed.
        Idempotent.
        """
        self.stopped = True
        self._send.close()
        if self._back is not None:
            self._back.set()  # pending pings raise ActorStopped
            self._back = None
        leftover = list(unhandled)
        while True:
            try:
                leftover.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._receive.close()
        failed = [m for m in leftover if _unanswered(getattr(m, "reply", None))]
        fail_pending((getattr(m, "reply", None) for m in failed), self.name, error)
        return failed

    def _stopped_error(self) -> ActorStopped:
        return ActorStopped(f"the {self.name} actor is not running")


def mailbox_of(actor: object) -> Mailbox[Any] | None:
    """The mailbox of an actor built on this plumbing (kept as ``_mailbox``), else None: what
    the health monitor pings."""
    found = getattr(actor, "_mailbox", None)
    return found if isinstance(found, Mailbox) else None


def _unanswered(reply: object) -> bool:
    return isinstance(reply, Reply) and not reply.done


async def drain(receive: trio.MemoryReceiveChannel[M]) -> list[M]:
    """Wait for one message on ``receive``, then take everything else already queued (no
    extra scheduler passes). ``Mailbox.drain`` is this on the mailbox's own channel."""
    batch = [await receive.receive()]
    while True:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return batch


def fail_pending(
    replies: Iterable[Reply[Any] | None],
    name: str,
    error: Callable[[], BaseException] | None = None,
) -> None:
    """Fail every unanswered slot among ``replies`` with ``error()``, by default
    ``ActorStopped`` naming the actor ``name`` (``Mailbox.stop`` does this for its messages)."""
    for reply in replies:
        if reply is not None and not reply.done:
            reply.fail(
                error() if error else ActorStopped(f"the {name} actor stopped before answering")
            )
