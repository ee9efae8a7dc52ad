"""One client connection of the RPC server: reader, reply writer, backpressure, dispatch.

Promises:
- Many requests may be in flight on one connection; each reply goes out as soon as it is ready
  (out of order). Replies are written by one writer task per connection, which batches whatever
  is queued into one ``send_all``.
- A method registered ``inline`` is answered on the reader without spawning a task; a method's
  ``precheck`` may refuse at once (a fail-fast rejection) or answer at once (``Answered``: a
  replay, a fallback) before a task is spawned. Everything
  else runs in a task per request inside the connection's nursery.
- Per-connection in-flight limit: when reached, the reader stops reading that connection until
  replies drain (backpressure; nothing is dropped).
- Hostile input: a violation with a readable msgid gets an error reply and the connection stays;
  without one, the peer gets a ``protocol_error`` notification and that connection alone closes.
- A peer that goes away cancels its in-flight requests (their lane slots and probes are freed).
- Errors: a ``Refusal`` from a method becomes its error reply; ``StoreFull`` from an async
  handler becomes ``storage_full``; anything else is logged (``server.handler_crashed``) and
  answered with ``internal``. A result msgpack cannot encode is answered with ``internal``; an
  error map it cannot encode keeps its code with a generic message.

The server (``server.py``) accepts connections, closes idle ones and drains; a connection
reports idleness (``idle_for``) and flushes its last replies on ``close_output``. A connection
knows the server only through a ``Dispatch`` (``dispatch.py``): the method table, the limits, the
admin check, the counters and the in-flight bookkeeping.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Final

import structlog
import trio

from claykiln.actors.errors import (
    ForbiddenRefusal,
    InternalRefusal,
    Refusal,
    ShuttingDownRefusal,
    StorageFullRefusal,
)
from claykiln.daemon.logs import get_logger
from claykiln.daemon.rpc.dispatch import Dispatch
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.protocol import (
    FrameParser,
    Request,
    Violation,
    encode_notification,
    encode_response,
    error_map,
)
from claykiln.daemon.rpc.types import Answered, Handler, RequestContext, ServerLimits
from claykiln.storage import StoreFull

__all__ = ["RECV_SIZE", "WRITER_FLUSH_TIMEOUT", "Connection"]

log = get_logger("claykiln.server")  # the server's logger: connection events are server events

RECV_SIZE: Final = 65536
WRITER_FLUSH_TIMEOUT: Final = 5.0  # a peer that stops reading gets this long to take its replies


def _pack_error(msgid: int, wire: dict[str, Any]) -> bytes:
    """An error reply; an error map msgpack cannot encode degrades to a plain ``internal``."""
    try:
        return encode_response(msgid, wire, None)
    except (TypeError, ValueError, OverflowError) as exc:
        log.error("server.unpackable_error", msgid=msgid, code=wire.get("code"), error=str(exc))
        code = wire.get("code") if isinstance(wire.get("code"), str) else "internal"
        msg = "the error details could not be encoded as msgpack; see the daemon log"
        return encode_response(msgid, error_map(str(code), msg), None)


def _pack_reply(msgid: int, result: Any) -> bytes:
    try:
        return encode_response(msgid, None, result)
    except (TypeError, ValueError, OverflowError) as exc:
        log.error("server.unpackable_result", msgid=msgid, error=str(exc))
        msg = "the result could not be encoded as msgpack"
        return encode_response(msgid, error_map("internal", msg), None)


class Connection:
    """One client connection: reader loop, reply flushing, in-flight bookkeeping.

    Replies go into ``pending``; whoever finds it non-empty and nobody writing flushes it in one
    ``send_all``: the reader right after a chunk (inline replies and fail-fast refusals leave
    without a task hop), the writer task for replies that finish later. ``writing`` keeps the
    two from sending at once.
    """

    def __init__(
        self, dispatch: Dispatch, stream: trio.SocketStream, conn_id: int, peer: PeerCred
    ) -> None:
        self.dispatch = dispatch
        self.stream = stream
        self.conn_id = conn_id
        self.peer = peer
        self.admin = dispatch.is_admin(peer)
        self.parser = FrameParser(dispatch.limits.protocol)
        self.pending: list[bytes] = []
        self.writing = False
        self.in_chunk = False  # the reader is dispatching a chunk and will flush after it
        self.output_closed = False
        self.wake = trio.Event()
        self.in_flight = 0
        self.room = trio.Event()
        self.closing = False
        self.broken = False
        self.flushed = trio.Event()
        self.last_active = trio.current_time()
        self.scope = trio.CancelScope()
        # Reads and writes go to the file descriptor directly (see _receive and _send_now):
        # trio's SocketStream spends a scheduler pass after every successful send and receive.
        self._fd = stream.socket.fileno()
        self._drained = True  # the last read left the socket empty: wait before reading again

    def send(self, frame: bytes) -> None:
        """Queue a reply (never blocks: the in-flight limit bounds what can queue)."""
        if self.output_closed:
            return  # the connection is going away; its late replies have nowhere to go
        self.pending.append(frame)
        if not self.writing and not self.in_chunk:
            self.wake.set()  # the reader flushes its own chunk's replies; wake the writer else

    async def flush(self) -> None:
        """Send everything pending, unless another task is already doing it."""
        if self.writing:
            return
        self.writing = True
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await self._send_all(batch[0] if len(batch) == 1 else b"".join(batch))
                self.room.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.closing = self.broken = True
            self.pending.clear()
            self.room.set()
        finally:
            self.writing = False

    async def _send_all(self, data: bytes) -> None:
        """Write ``data`` to the socket: at once when the kernel takes it all (no scheduler pass),
        else waiting for room. Raises OSError (a peer that went away) or ClosedResourceError."""
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)
                continue
            view = view[sent:]

    async def _receive(self) -> bytes:
        """The next chunk from the socket (b"" at EOF or a reset). Waits for readability first
        when the last read drained the socket, which is also this loop's checkpoint; a read that
        filled the buffer is followed by another at once, with an explicit checkpoint."""
        fd = self._fd
        if self._drained:
            await trio.lowlevel.wait_readable(fd)
        else:
            await trio.lowlevel.checkpoint()
        while True:
            try:
                data = os.read(fd, RECV_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                    return b""
                raise
            self._drained = len(data) < RECV_SIZE
            return data

    async def writer(self) -> None:
        try:
            while not self.broken and not (self.output_closed and not self.pending):
                await self.wake.wait()
                self.wake = trio.Event()
                await self.flush()
        finally:
            self.flushed.set()

    def close_output(self) -> None:
        """No more replies will be queued: the writer flushes what is pending and stops."""
        self.output_closed = True
        self.wake.set()

    def _backlog(self) -> int:
        return self.in_flight + len(self.pending)

    async def run(self) -> None:
        limits = self.dispatch.limits
        async with trio.open_nursery() as outer:
            outer.start_soon(self.writer)
            async with trio.open_nursery() as requests:
                with self.scope:
                    await self._read_loop(requests, limits)
                # The peer is gone, idle, or broke the protocol: its in-flight work is
                # cancelled (lane slots and probes are freed), what is queued is still flushed.
                requests.cancel_scope.cancel()
            self.close_output()
            outer.cancel_scope.deadline = trio.current_time() + WRITER_FLUSH_TIMEOUT

    async def _wait_for_room(self, limit: int) -> None:
        """Backpressure: wait until the backlog drops below ``limit``.

        Meanwhile watch the socket without reading it: a peer that hangs up (EOF with nothing
        unread) is noticed at once, so its in-flight work is cancelled and its lane slots freed.
        (A peer that pipelined more requests before hanging up is noticed when room frees.)
        """
        while self._backlog() >= limit and not self.closing:
            if self.pending:
                await self.flush()
                continue
            self.room = trio.Event()
            async with trio.open_nursery() as watch:
                watch.start_soon(self._watch_hangup, watch.cancel_scope)
                await self.room.wait()
                watch.cancel_scope.cancel()

    async def _watch_hangup(self, scope: trio.CancelScope) -> None:
        sock = self.stream.socket
        try:
            peek = await sock.recv(1, socket.MSG_PEEK)
        except OSError:
            peek = b""
        if peek:
            await trio.sleep_forever()  # requests are waiting: only room lets us read on
        self.closing = True
        scope.cancel()

    async def _read_loop(self, nursery: trio.Nursery, limits: ServerLimits) -> None:
        while not self.closing:
            await self._wait_for_room(limits.max_in_flight)
            try:
                data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            self.last_active = trio.current_time()
            self.in_chunk = True
            try:
                for event in self.parser.feed(data):
                    # One chunk can hold thousands of small frames: apply the in-flight limit
                    # per request, so replies never pile up (backpressure, nothing dropped).
                    if self._backlog() >= limits.max_in_flight:
                        await self._wait_for_room(limits.max_in_flight)
                    if self.closing:
                        return
                    if isinstance(event, Request):
                        self._dispatch(nursery, event)
                    elif isinstance(event, Violation) and self._violation(event):
                        return
                    # Responses and notifications from a client are ignored.
            finally:
                self.in_chunk = False
            if self.pending:
                await self.flush()  # inline replies leave now, without waking the writer

    def idle_for(self, now: float) -> float:
        """Seconds with nothing received and nothing in flight (0 while busy)."""
        if self._backlog() or self.writing:
            return 0.0
        return now - self.last_active

    def _violation(self, v: Violation) -> bool:
        """Answer a violation; True when the connection must close."""
        self.dispatch.counters.protocol_errors += 1
        log.warning("conn.protocol_error", code=v.code, detail=v.message, msgid=v.msgid)
        if v.msgid is not None and not v.fatal:
            self.send(encode_response(v.msgid, error_map(v.code, v.message), None))
            return False
        if v.msgid is not None:
            self.send(encode_response(v.msgid, error_map(v.code, v.message), None))
        self.send(encode_notification("protocol_error", {"code": v.code, "message": v.message}))
        self.closing = True
        return True

    def _dispatch(self, nursery: trio.Nursery, req: Request) -> None:
        dispatch = self.dispatch
        counters = dispatch.counters
        counters.requests += 1
        method = dispatch.methods.get(req.method)
        if method is None:
            known = ", ".join(sorted(dispatch.methods))
            msg = f"unknown method {req.method!r}; this server knows: {known}"
            self.send(encode_response(req.msgid, error_map("unknown_method", msg), None))
            return
        ctx = RequestContext(self.peer, self.conn_id, req.msgid, self.admin)
        try:
            if counters.draining:
                # started=False: nothing of this request ran, so any client may resend it.
                msg = "the daemon is shutting down; retry against the new instance"
                raise ShuttingDownRefusal(msg, details={"started": False})
            if method.admin and not self.admin:
                msg = f"{req.method} is an admin method; peer uid {self.peer.uid} is not an admin"
                raise ForbiddenRefusal(msg)
            if method.inline is not None:
                self.send(_pack_reply(req.msgid, method.inline(ctx, req.args)))
                return
            prepared: Any = req.args
            if method.precheck is not None:
                prepared = method.precheck(ctx, req.args)
                if isinstance(prepared, Answered):
                    self.send(_pack_reply(req.msgid, prepared.result))
                    return
        except Refusal as exc:
            self.send(_pack_error(req.msgid, exc.to_wire()))
            return
        except Exception:
            log.exception("server.handler_crashed", method=req.method, msgid=req.msgid)
            wire = InternalRefusal("internal error; see the daemon log").to_wire()
            self.send(_pack_error(req.msgid, wire))
            return
        assert method.handler is not None
        self.in_flight += 1
        dispatch.begin_request()
        nursery.start_soon(self._run_request, method.handler, ctx, req, prepared)

    async def _run_request(
        self, handler: Handler, ctx: RequestContext, req: Request, prepared: Any
    ) -> None:
        structlog.contextvars.bind_contextvars(msgid=req.msgid, method=req.method)
        try:
            result = await handler(ctx, prepared)
        except Refusal as exc:
            self.send(_pack_error(req.msgid, exc.to_wire()))
        except StoreFull as exc:
            wire = StorageFullRefusal(f"storage is full: {exc}").to_wire()
            self.send(_pack_error(req.msgid, wire))
        except Exception:
            log.exception("server.handler_crashed")
            wire = InternalRefusal("internal error; see the daemon log").to_wire()
            self.send(_pack_error(req.msgid, wire))
        else:
            self.send(_pack_reply(req.msgid, result))
        finally:
            self.in_flight -= 1
            self.last_active = trio.current_time()
            self.room.set()
            self.dispatch.end_request()
