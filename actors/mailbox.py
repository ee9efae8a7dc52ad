"""The shared plumbing every actor uses: bounded inboxes, cheap reply slots, drain-per-wake.

Measured (notes/measurements.md): a fresh memory channel per ask costs ~3.2 us and an actor that
handles one message per wake costs an extra scheduler pass per request; an Event-based reply slot
and an actor that drains its whole inbox on each wake bring a hop to ~4 us.

- ``Reply[T]``: a one-shot slot (an Event plus a value or an exception). The asker awaits
  ``reply.wait()``; the actor calls ``set`` or ``fail`` exactly once. ``fail_pending`` fails every
  slot still queued when an actor stops, so no asker hangs.
- ``drain(receive)``: after one blocking receive, take everything already queued, without
  further scheduler passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import trio

__all__ = ["ActorStopped", "Reply", "drain", "fail_pending"]

T = TypeVar("T")
M = TypeVar("M")


class ActorStopped(Exception):
    """The actor that owed this reply stopped before answering."""


class Reply(Generic[T]):
    """A one-shot answer slot; cheaper than a channel per ask."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set(self, value: T) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> T:
        """The value, or raise what the actor failed the slot with."""
        await self._event.wait()
        return self.result()

    def result(self) -> T:
        """The value of a completed slot (raise its error); only after ``done``."""
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


async def drain(receive: trio.MemoryReceiveChannel[M]) -> list[M]:
    """Wait for one message, then take everything else already queued (no extra passes)."""
    first = await receive.receive()
    batch = [first]
    while True:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return batch


def fail_pending(replies: Iterable[Reply[object] | None], name: str) -> None:
    """Fail every unanswered slot with ``ActorStopped`` naming the actor."""
    for reply in replies:
        if reply is not None:
            reply.fail(ActorStopped(f"the {name} actor stopped before answering"))
