"""One epoll for every idle connection reader: most requests are answered without a task switch.

Why: a reader task per connection, each waiting in trio's ``wait_readable``, costs every request a
registration, a wake-up and a task switch. On the 2-core machine of docs/performance.md a bare
trio msgpack server spent 28-30 us of CPU per ``hello`` round trip at 64 connections, the same
frames answered by a plain Python epoll loop 10 us: most of a replay's or a rejection's cost was
that machinery, not the daemon's work (docs/performance.md, "The shared poller").

Promises:
- A connection's reader with nothing left to do but wait for bytes parks here (``wait``): its
  descriptor is registered in the poller's own epoll (level-triggered) for as long as it is
  parked, and only then.
- One poller task waits in trio for that epoll to have events, then calls each ready reader's
  ``on_readable`` synchronously: the reader's fast path reads, decodes and dispatches there,
  and stays parked. So a request costs one read, its work and one write.
- Whatever must wait (backpressure, a peer over its share, a used-up turn, EOF, a closing
  connection, a large chunk) the fast path hands to the parked reader task with ``wake``: the
  descriptor leaves the epoll and the task resumes with what was left (bytes or decoded
  events). An exception in a fast path is raised in the reader task, as if it had happened there.
- A reader cancelled while parked leaves the epoll at once (trio's abort), so a closed or cut-off
  connection is never polled again; a pass skips readers that left meanwhile.
- The poller's own turn: after ``POLLER_TURN`` seconds of fast paths in one pass it lets every
  other runnable task run once (request tasks it started, the storage writer's completions)
  before the next ready reader.
- Replies are written per pass, not per reader: a fast path hands the replies it answered to
  the poller (``send_after_pass``), which writes them, one write per connection, when the
  pass ends, when ``FLUSH_AFTER`` seconds went by since the pass's first reply waited, and
  always before it yields to another task or stops (nothing is left unsent). Why: each write
  to a sleeping peer wakes it, and on a virtual machine that wake-up (an idle vCPU halted,
  woken by the host) is paid by the writer's system call. Written one after another, the
  replies of a pass wake a client process once, and it finds the others already there;
  spread between the next readers' work, each woke it again (docs/performance.md, "Replies
  written per pass": replays 18.3-18.6k/s -> 26.7-26.8k/s, 54 -> 37 us of daemon CPU each).
- Busy polling (``busy_poll`` seconds, 0: off, the default): after a pass that served a reader,
  the poller polls its epoll without blocking for up to ``busy_poll`` seconds before it goes
  back to trio's wait, and serves what arrives meanwhile at once. The core stays busy instead
  of idling between requests that come a few tens of microseconds apart: a woken idle core runs
  the next request several times slower on a virtual machine (docs/performance.md, "Busy
  polling"). Bounded: the spin counts toward the poller's turn, so the other tasks still run
  at least once per ``POLLER_TURN``.
  It costs CPU: up to one core while requests keep arriving, ``busy_poll`` per quiet pass.
- A poller that stops (its task cancelled) wakes every parked reader with ``STOPPED``; readers
  then read for themselves (``Inbound.receive``), as they do when no poller runs.
"""

from __future__ import annotations

import contextlib
import select
import time
from typing import Any, Final, Protocol

import outcome
import trio

__all__ = ["FLUSH_AFTER", "MAX_EVENTS", "POLLER_TURN", "STOPPED", "Parked", "Poller", "Unsent"]

POLLER_TURN: Final = 0.001  # seconds of fast paths in one pass before the others get a turn
FLUSH_AFTER: Final = 0.00025  # seconds a pass's first unsent reply waits at most for the others
MAX_EVENTS: Final = 256  # ready descriptors taken from the epoll per system call


class _Stopped:
    def __repr__(self) -> str:
        return "STOPPED"


STOPPED: Final = _Stopped()  # what a parked reader is woken with when the poller stops


class Parked(Protocol):
    """A parked reader: its fast path, run by the poller when its descriptor is readable."""

    def on_readable(self) -> None: ...


class Unsent(Protocol):
    """A connection's queued replies (``replies.Replies``): written without blocking."""

    def send_now(self) -> None: ...


class Poller:
    """The shared epoll of the parked readers and the task that serves it (``run``)."""

    def __init__(self, busy_poll: float = 0.0) -> None:
        self.busy_poll = busy_poll
        self._epoll: Any = None  # select.epoll while running
        self._parked: dict[int, tuple[Parked, trio.lowlevel.Task]] = {}
        self.running = False
        self.passes = 0  # wake-ups with at least one ready reader (for tests and probes)
        self.handed = 0  # readers woken with something to do (``wake``)
        self.spun = 0  # passes whose readers busy polling found (no wait in trio before them)
        self.flushes = 0  # batches of replies written (``send_after_pass``)
        self._unsent: list[Unsent] = []  # replies the fast paths of this pass left to write
        self._unsent_since = 0.0  # when the first of them was handed over (perf_counter)

    @property
    def parked(self) -> int:
        """Readers parked now."""
        return len(self._parked)

    async def run(self) -> None:
        """Serve the parked readers until cancelled (one ``run`` at a time)."""
        if self.running:
            raise RuntimeError("the poller already runs")
        epoll = self._epoll = select.epoll()
        parked = self._parked
        self.running = True
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                ready = epoll.poll(0, MAX_EVENTS)
                began = time.perf_counter()
                while ready:
                    self.passes += 1
                    for fd, _events in ready:
                        entry = parked.get(fd)
                        if entry is not None:
                            entry[0].on_readable()
                        now = time.perf_counter()
                        if self._unsent and now - self._unsent_since > FLUSH_AFTER:
                            self._flush()
                        if now - began > POLLER_TURN:
                            self._flush()
                            await trio.lowlevel.checkpoint()
                            began = time.perf_counter()
                    self._flush()
                    if not self.busy_poll:
                        break
                    if time.perf_counter() - began > POLLER_TURN:
                        await trio.lowlevel.checkpoint()
                        began = time.perf_counter()
                    ready = self._spin(epoll)
        finally:
            self._flush()
            self.running = False
            for fd in list(parked):
                self._release(fd, outcome.Value(STOPPED))
            epoll.close()

    def send_after_pass(self, replies: Unsent) -> None:
        """Write ``replies`` with the others of this pass (see the module doc); a fast path
        calls it at most once per turn, for replies it queued while holding them."""
        if not self._unsent:
            self._unsent_since = time.perf_counter()
        self._unsent.append(replies)

    def _flush(self) -> None:
        """Write the replies handed over since the last flush, in the order they came."""
        unsent = self._unsent
        if unsent:
            self._unsent = []
            self.flushes += 1
            for replies in unsent:
                replies.send_now()

    def _spin(self, epoll: Any) -> list[tuple[int, int]]:
        """Busy polling: poll without blocking until a descriptor is ready (returned) or
        ``busy_poll`` seconds passed (an empty list)."""
        until = time.perf_counter() + self.busy_poll
        while True:
            ready: list[tuple[int, int]] = epoll.poll(0, MAX_EVENTS)
            if ready:
                self.spun += 1
                return ready
            if time.perf_counter() >= until:
                return ready

    async def wait(self, fd: int, reader: Parked) -> Any:
        """Park the current task as ``reader`` of ``fd`` until its fast path hands it something
        (``wake``); raises what the fast path raised, or Cancelled (the descriptor leaves)."""
        self._epoll.register(fd, select.EPOLLIN)
        self._parked[fd] = (reader, trio.lowlevel.current_task())

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            self._forget(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self, fd: int, reader: Parked, result: outcome.Outcome[Any]) -> None:
        """Resume ``reader``'s parked task with ``result`` (nothing when it is not parked: it
        was cancelled, or woken already)."""
        entry = self._parked.get(fd)
        if entry is not None and entry[0] is reader:
            self.handed += 1
            self._release(fd, result)

    def _release(self, fd: int, result: outcome.Outcome[Any]) -> None:
        _reader, task = self._parked[fd]
        self._forget(fd)
        trio.lowlevel.reschedule(task, result)

    def _forget(self, fd: int) -> None:
        del self._parked[fd]
        with contextlib.suppress(OSError, ValueError):  # closed already: the kernel dropped it
            self._epoll.unregister(fd)
