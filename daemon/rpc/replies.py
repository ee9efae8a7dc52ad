"""One connection's outgoing replies: the queue, the one writer, and what the peer owes us.

Promises:
- ``queue(frame)`` never blocks; a lone reply with nothing owed goes to the kernel at once;
  whoever finds replies queued and nobody writing flushes them in one ``os.write`` batch (the
  connection's reader right after a chunk, else the writer task).
- ``unsent`` counts the bytes queued or half written: the connection stops reading a peer that
  leaves more than ``[daemon.limits] max_reply_backlog`` unread, so unread replies are bounded
  in bytes, not only in count.
- ``stalled_for(now)``: how long replies have waited with not one byte taken by the peer (0
  while nothing is owed); the server cuts a connection off past ``reply_timeout``.
- After ``close()`` nothing more is queued; the writer sends what is left and sets ``flushed``.
- A peer that went away (EPIPE, ECONNRESET) marks the queue ``broken`` and drops what is left.

Also here: packing a reply or an error (``pack_reply``, ``pack_error``: whatever a method
returns, the peer gets a frame; an error message is cut to ``MAX_MESSAGE_CHARS``) and
``stopped_reply``, the ``shutting_down`` a request cut by the drain gets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Final

import trio

from claykiln.actors.errors import (
    InternalRefusal,
    Refusal,
    ShuttingDownRefusal,
    StorageFullRefusal,
)
from claykiln.daemon.logs import get_logger
from claykiln.daemon.rpc.clock import run_clock
from claykiln.daemon.rpc.protocol import MAX_MESSAGE_CHARS, clamp, encode_response, error_map
from claykiln.storage import StoreFull

__all__ = ["Replies", "later_reply", "pack_error", "pack_reply", "stopped_reply"]

log = get_logger("claykiln.server")

WRITE_BATCH: Final = 262_144  # bytes of small replies joined into one write at most


def pack_error(msgid: int, wire: dict[str, Any]) -> bytes:
    """An error reply; an error map msgpack cannot encode degrades to a plain ``internal``."""
    message = wire.get("message")
    if isinstance(message, str) and len(message) > MAX_MESSAGE_CHARS:
        wire = {**wire, "message": clamp(message)}  # a message that quotes too much input
    try:
        return encode_response(msgid, wire, None)
    except (TypeError, ValueError, OverflowError) as exc:
        log.error("server.unpackable_error", msgid=msgid, code=wire.get("code"), error=str(exc))
        code = wire.get("code") if isinstance(wire.get("code"), str) else "internal"
        msg = "the error details could not be encoded as msgpack; see the daemon log"
        return encode_response(msgid, error_map(str(code), msg), None)


def pack_reply(msgid: int, result: Any) -> bytes:
    try:
        return encode_response(msgid, None, result)
    except (TypeError, ValueError, OverflowError) as exc:
        log.error("server.unpackable_result", msgid=msgid, error=str(exc))
        msg = "the result could not be encoded as msgpack"
        return encode_response(msgid, error_map("internal", msg), None)


def stopped_reply(msgid: int) -> bytes:
    """``shutting_down`` for a request the drain cancelled part way (``started: true``: it
    may have had effects, so a client resends it only where repeating it is safe)."""
    msg = (
        "the daemon stopped before this request finished (its grace period ran out); "
        "it may have run: resend it only if it is safe to repeat"
    )
    return pack_error(msgid, ShuttingDownRefusal(msg, details={"started": True}).to_wire())


def later_reply(
    msgid: int, method: str, result: Any, error: BaseException | None, *, aborting: bool
) -> bytes:
    """The reply a ``Later`` settled with: ``result``, or ``error`` answered as a handler's
    would be (a ``Refusal`` as itself, ``shutting_down`` once the drain aborted; StoreFull as
    ``storage_full``; anything else logged as ``server.handler_crashed`` and ``internal``)."""
    if error is None:
        return pack_reply(msgid, result)
    if isinstance(error, Refusal):
        return stopped_reply(msgid) if aborting else pack_error(msgid, error.to_wire())
    if isinstance(error, StoreFull):
        return pack_error(msgid, StorageFullRefusal(f"storage is full: {error}").to_wire())
    try:
        raise error
    except Exception:
        log.exception("server.handler_crashed", method=method, msgid=msgid)
    return pack_error(msgid, InternalRefusal("internal error; see the daemon log").to_wire())


class Replies:
    """The replies of one connection (a socket file descriptor in non-blocking mode).

    Writes go to the descriptor directly: trio's SocketStream spends a scheduler pass after
    every successful send. ``on_sent`` is called after each batch leaves (the connection's
    backpressure waits on it).
    """

    def __init__(self, fd: int, on_sent: Callable[[], None]) -> None:
        self._fd = fd
        self._on_sent = on_sent
        self.pending: list[bytes] = []
        self.unsent = 0  # bytes queued or not yet taken by the kernel
        self.writing = False
        self.hold = False  # the reader dispatches a chunk and flushes after it: no wake-up
        self.closed = False
        self.broken = False
        self.flushed = trio.Event()
        self._wake = trio.Event()
        self._now = run_clock()  # trio.current_time in one call (clock.py)
        self._progress = self._now()  # the last time the peer took bytes
        self.write_seconds = 0.0  # time spent in writes since the owner last took it

    def queue(self, frame: bytes) -> None:
        """Queue a reply (dropped once closed: its connection is going away). With nothing
        owed, nobody writing and no reader batching (``hold``), the reply goes to the kernel
        at once (a non-blocking write): no writer wake-up for the common lone reply."""
        if self.closed or self.broken:
            return
        if not self.unsent:
            self._progress = self._now()  # the wait for the peer starts now
            if not self.hold and not self.writing:
                sent = self._write_now(frame)
                if sent < 0 or sent == len(frame):
                    return
                frame = frame[sent:]  # the rest waits for room, with the writer
        self.pending.append(frame)
        self.unsent += len(frame)
        if not self.writing and not self.hold:
            self._wake.set()

    def send_now(self) -> None:
        """Write what is queued without blocking (the poller's fast path): what the kernel does
        not take now waits for the writer task, which is woken for it."""
        if self.writing or not self.pending:
            return
        batch = self._next_batch()
        sent = self._write_now(batch)
        if sent < 0:
            self.pending.clear()
            self.unsent = 0
            return
        if sent:
            self._progress = self._now()
            self.unsent -= sent
            self._on_sent()
        if sent < len(batch):
            self.pending.insert(0, batch[sent:])
        if self.pending:
            self._wake.set()

    def _write_now(self, data: bytes) -> int:
        """One non-blocking write, timed: the bytes the kernel took (0: its buffer is full), or
        -1 when the peer went away (``broken`` is set and the waiters told)."""
        began = time.perf_counter()
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            self.broken = True
            self._on_sent()
            return -1
        finally:
            self.write_seconds += time.perf_counter() - began

    def take_write_seconds(self) -> float:
        """The time spent in writes since the last call (the peer's share is charged it)."""
        spent, self.write_seconds = self.write_seconds, 0.0
        return spent

    def stalled_for(self, now: float) -> float:
        """Seconds replies have waited with nothing taken by the peer (0: nothing owed)."""
        return now - self._progress if self.unsent else 0.0

    async def flush(self) -> None:
        """Send everything queued, unless another task is already doing it.

        Returns when the kernel took it all or the peer went away (``broken``); blocks while
        the peer does not read (the server's reply timeout ends that by cancellation).
        """
        if self.writing:
            return
        self.writing = True
        try:
            while self.pending:
                await self._send_all(self._next_batch())
                self._on_sent()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.broken = True
            self.pending.clear()
            self.unsent = 0
            self._on_sent()
        finally:
            self.writing = False

    def _next_batch(self) -> bytes:
        """The queued frames that go out in one write: joined while small, so many small
        replies cost one system call; a large frame goes alone (no copy of a big reply)."""
        pending = self.pending
        if len(pending) == 1 or len(pending[0]) >= WRITE_BATCH:
            return pending.pop(0) if len(pending) > 1 else pending.pop()
        size = count = 0
        for frame in pending:
            if size and size + len(frame) > WRITE_BATCH:
                break
            size += len(frame)
            count += 1
        if count == len(pending):
            self.pending = []
            return b"".join(pending)
        batch = b"".join(pending[:count])
        del pending[:count]
        return batch

    async def _send_all(self, data: bytes) -> None:
        """Write ``data``: at once when the kernel takes it all (no scheduler pass), else
        waiting for room. Raises OSError (a peer that went away) or ClosedResourceError."""
        view = memoryview(data)
        while view:
            began = time.perf_counter()
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                sent = -1  # the kernel's buffer is full: wait below, untimed
            finally:
                self.write_seconds += time.perf_counter() - began
            if sent < 0:
                await trio.lowlevel.wait_writable(self._fd)
                continue
            if sent:
                self._progress = self._now()
                self.unsent -= sent
            view = view[sent:]

    async def writer(self) -> None:
        """The connection's writer task: flush whenever woken, until closed and empty."""
        try:
            while not self.broken and not (self.closed and not self.pending):
                await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
        finally:
            self.flushed.set()

    def close(self) -> None:
        """No more replies: the writer sends what is queued and stops."""
        self.closed = True
        self._wake.set()
