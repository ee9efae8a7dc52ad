"""One client connection of the RPC server: reader, backpressure, fairness and dispatch.

Promises:
- Many requests may be in flight on one connection; each reply goes out as soon as it is ready
  (out of order), batched by the connection's ``Replies`` (``replies.py``).
- A method registered ``inline`` is answered on the reader without spawning a task; a method's
  ``precheck`` may refuse at once (a fail-fast rejection) or answer at once (``Answered``: a
  replay, a fallback) before a task is spawned, or hand back a ``Later`` its holder settles
  without a task (a durable ``submit``, answered from the writer's commit). Everything else
  runs in a task per request inside the connection's nursery. An inline method marked
  ``shared`` (``status``) is computed at most once per ``shared_answer_age`` and its packed
  answer reused by every connection.
- The reader parks in the server's poller (``poller.py``) while it waits for bytes; the poller
  runs its fast path (``on_readable``: read, decode, dispatch, queue the replies, which the
  poller writes with the others of its pass) with the reader's task left parked, and wakes
  the task only for what must wait: backpressure, a peer over its share, a used-up turn, EOF
  or a closing connection, a chunk over ``FEED_SLICE``. The task then goes on from where the
  fast path stopped, with the same rules.
- Fairness: a reader gives the other connections a turn after ``TURN_BUDGET`` seconds of work
  (decoding and inline methods counted), so a peer that pipelines expensive or hostile frames
  cannot hold the loop; decoding happens in slices of ``FEED_SLICE`` bytes. Over time, the work
  of each turn is charged to the peer's share of the loop (``share.py``): while the loop is busy
  with others, a peer over its share waits before its connections read or work again (a new
  connection too), so a flood gets a bounded share per second whatever its rate.
- Backpressure: the reader stops reading while ``max_in_flight`` requests are unanswered or
  ``max_reply_backlog`` bytes of replies are unread (nothing is dropped).
- Hostile input: a violation with a readable msgid gets an error reply and the connection stays;
  without one, the peer gets a ``protocol_error`` notification and that connection alone closes.
  Messages quote a peer's input only as a short excerpt. Well-formed client notifications
  ``[2, method, params]`` are ignored.
- A peer that goes away cancels its in-flight requests (their lane slots and probes are freed).
  A peer that only shuts its write side (half-close) still gets the replies to what it sent.
- ``abort()`` (the drain's end): in-flight requests are cancelled and each is answered
  ``shutting_down`` with ``details.started = true``, then the connection closes.
- Server-pushed notifications (``subscribe``): a method finds the connection it runs on in
  ``CURRENT_CONNECTION``; ``send`` queues a frame, ``wait_drained`` returns once everything queued
  has gone to the kernel (so a pusher never piles frames up behind a peer that does not read),
  and a connection with ``streams`` open is not idle.
- Errors (``answers.py`` for tasks and ``Later``): a ``Refusal`` from a method becomes its error
  reply; ``StoreFull`` from an async handler becomes ``storage_full``; anything else is logged
  (``server.handler_crashed``) and answered with ``internal``. A result msgpack cannot encode
  is answered with ``internal``; an error map it cannot encode keeps its code with a generic
  message.

The server (``server.py``) accepts connections, closes idle, stalled and drip-fed ones and
drains; a connection reports what the sweeper needs (``idle_for``, ``frame_age``,
``replies.stalled_for``). A connection knows the server only through a ``Dispatch``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any, Final

import outcome
import trio

from claykiln.actors.errors import (
    ForbiddenRefusal,
    InternalRefusal,
    Refusal,
    ShuttingDownRefusal,
)
from claykiln.daemon.logs import get_logger
from claykiln.daemon.rpc.answers import await_later, drop_traceback, run_request
from claykiln.daemon.rpc.clock import run_clock
from claykiln.daemon.rpc.dispatch import Dispatch
from claykiln.daemon.rpc.inbound import HANGUP_POLL, Inbound
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.poller import STOPPED
from claykiln.daemon.rpc.protocol import (
    FEED_SLICE,
    Event,
    FrameParser,
    Request,
    Violation,
    clamp,
    encode_notification,
    encode_response,
    encode_response_body,
    error_map,
    excerpt,
)
from claykiln.daemon.rpc.replies import Replies, pack_error, pack_reply
from claykiln.daemon.rpc.types import Answered, Later, Method, RequestContext, ServerLimits

__all__ = [
    "CURRENT_CONNECTION",
    "TURN_BUDGET",
    "WRITER_FLUSH_TIMEOUT",
    "Connection",
]

log = get_logger("claykiln.server")  # the server's logger: connection events are server events

WRITER_FLUSH_TIMEOUT: Final = 5.0  # a closing connection's last replies get this long to leave
TURN_BUDGET: Final = 0.0005  # seconds of work a reader does before the others get a turn


# The connection whose reader (or request task) runs the current code: set by ``run``.
CURRENT_CONNECTION: ContextVar[Connection] = ContextVar("claykiln_connection")


class Connection:
    """One client connection: reader loop, in-flight bookkeeping, replies (``Replies``)."""

    def __init__(
        self, dispatch: Dispatch, stream: trio.SocketStream, conn_id: int, peer: PeerCred
    ) -> None:
        self.dispatch = dispatch
        self.stream = stream
        self.conn_id = conn_id
        self.peer = peer
        self.admin = dispatch.is_admin(peer)
        self.parser = FrameParser(dispatch.limits.protocol)
        self.inbound = Inbound(stream.socket)
        self.fd = stream.socket.fileno()
        self._context = contextvars.copy_context()  # set in ``run``: the fast path runs in it
        self._nursery: trio.Nursery | None = None  # the requests' nursery, while reading
        self.replies = Replies(self.fd, self._room_changed)
        self.in_flight = 0
        self.room = trio.Event()
        self.closing = False
        self.aborting = False
        self.half_closed = False
        self._now = run_clock()  # trio.current_time in one call (clock.py)
        self.last_active = self._now()
        self.frame_started: float | None = None  # when the incomplete frame's bytes began
        self.scope = trio.CancelScope()  # the reader
        self._requests: trio.CancelScope | None = None
        self._all: trio.CancelScope | None = None
        self.streams = 0  # open subscriptions pushing notifications: the connection is not idle
        self.laters: set[Later] = set()  # requests a ``Later`` answers, not settled yet
        self._output_idle = trio.lowlevel.ParkingLot()  # wait_drained's waiters
        self._owed = 0.0  # seconds to wait before the next turn: the peer is over its share
        self.held_for = 0.0  # seconds this connection waited for its peer's share, in all

    @property
    def flushed(self) -> trio.Event:
        """Set once the last replies left (or could not)."""
        return self.replies.flushed

    def send(self, frame: bytes) -> None:
        """Queue a reply (never blocks: in-flight and backlog limits bound what can queue)."""
        self.replies.queue(frame)

    def close_output(self) -> None:
        """No more replies will be queued: the writer flushes what is pending and stops."""
        self.replies.close()
        self._output_idle.unpark_all()

    def _room_changed(self) -> None:
        """After every batch of replies left: wake the reader and ``wait_drained``'s waiters,
        if any (this runs per write: an empty parking lot is not walked)."""
        self.room.set()
        if self._output_idle:
            self._output_idle.unpark_all()

    async def wait_drained(self) -> None:
        """Return once every frame queued so far has gone to the kernel, or at once when the
        output is closed or broken (a pusher checks ``replies.closed`` / ``replies.broken``)."""
        replies = self.replies
        while replies.unsent and not (replies.closed or replies.broken):
            await self._output_idle.park()

    # -- what the server's sweeper and drain use ------------------------------------------------
    def idle_for(self, now: float) -> float:
        """Seconds with nothing received and nothing in flight or owed (0 while busy)."""
        if self.in_flight or self.replies.unsent or self.replies.writing or self.streams:
            return 0.0
        return now - self.last_active

    def frame_age(self, now: float) -> float:
        """Seconds since the first bytes of a frame still incomplete (0 between frames)."""
        return 0.0 if self.frame_started is None else now - self.frame_started

    def expire_frame(self, timeout: float) -> None:
        """A frame took longer than ``timeout`` to arrive: say so and close (and penalize)."""
        msg = f"a frame must arrive whole within {timeout:g} s of its first byte"
        self.send(encode_notification("protocol_error", error_map("frame_timeout", msg)))
        self.closing = True
        self._penalize()
        self.scope.cancel()

    def cut_off(self) -> None:
        """Close now, dropping unsent replies (a peer that stopped reading them; penalized)."""
        self.closing = True
        self.replies.broken = True
        self._penalize()
        if self._all is not None:
            self._all.cancel()

    def _penalize(self) -> None:
        """The peer misbehaved: it owes a share window (``share.py``, "Penalty")."""
        shares = self.dispatch.shares
        shares.penalize(self.peer.pid, shares.window, self._now())

    def abort(self) -> None:
        """The drain's end: cancel in-flight requests (each answers ``shutting_down``), stop
        reading, flush and close."""
        self.aborting = self.closing = True
        self.scope.cancel()
        if self._requests is not None:
            self._requests.cancel()
        for later in list(self.laters):
            later.refuse(ShuttingDownRefusal("the daemon stopped before this request finished"))

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> None:
        CURRENT_CONNECTION.set(self)  # this task's context: its requests see their connection
        self._context = contextvars.copy_context()  # the fast path's (poller.py): the same
        limits = self.dispatch.limits
        async with trio.open_nursery() as outer:
            self._all = outer.cancel_scope
            outer.start_soon(self.replies.writer)
            async with trio.open_nursery() as requests:
                self._requests = requests.cancel_scope
                if self.aborting:
                    requests.cancel_scope.cancel()
                with self.scope:
                    await self._read_loop(requests, limits)
                self.parser.close()  # nothing more is read: free a half-built frame now
                # The peer is gone, idle, or broke the protocol: its in-flight work is
                # cancelled (lane slots and probes are freed), what is queued is still flushed.
                requests.cancel_scope.cancel()
            self.close_output()
            self.dispatch.shares.release(self.peer.pid, self.conn_id)
            outer.cancel_scope.deadline = self._now() + WRITER_FLUSH_TIMEOUT

    def _backlogged(self, limits: ServerLimits) -> bool:
        return (
            self.in_flight + len(self.replies.pending) >= limits.max_in_flight
            or self.replies.unsent >= limits.max_reply_backlog
        )

    async def _wait_for_room(self, limits: ServerLimits) -> None:
        """Backpressure: wait until requests and unread replies are below their limits.

        Meanwhile watch the socket without reading it: a peer that hangs up (EOF with nothing
        unread) is noticed at once, so its in-flight work is cancelled and its lane slots freed.
        (A peer that pipelined more requests before hanging up is noticed when room frees.)
        """
        while self._backlogged(limits) and not self.closing:
            if self.replies.pending and not self.replies.writing:
                await self.replies.flush()
                if self.replies.broken:
                    self.closing = True
                continue
            self.room = trio.Event()
            async with trio.open_nursery() as watch:
                watch.start_soon(self._watch_hangup, watch.cancel_scope)
                await self.room.wait()
                watch.cancel_scope.cancel()

    async def _watch_hangup(self, scope: trio.CancelScope) -> None:
        await self.inbound.wait_hangup()
        self.closing = True
        scope.cancel()

    async def _read_loop(self, nursery: trio.Nursery, limits: ServerLimits) -> None:
        parser = self.parser
        replies = self.replies
        self._nursery = nursery
        # A peer that reconnects still owes what it took: a new connection waits its turn too.
        self._owed = self.dispatch.shares.wait(self.peer.pid, self._now())
        while not self.closing:
            if self._owed:  # over its peer's share of a busy loop: wait before reading on
                await self._hold_back()
            await self._wait_for_room(limits)
            if self.closing:
                return
            try:
                got = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if isinstance(got, list):  # what the fast path left undone, decoded already
                batches: Iterable[list[Event]] = (got,)
            elif not got:
                await self._peer_stopped_sending()
                return
            else:
                data = got
                batches = (
                    parser.feed(data[start : start + FEED_SLICE])
                    for start in range(0, len(data), FEED_SLICE)
                )
            now = self.last_active = self._now()
            frames_before, held_before = parser.frames, self.held_for
            replies.hold = True
            # The work since ``turn_began`` is charged once, before each wait (``in_turn``
            # False while waiting: a wait cut short by a cancellation is not work).
            turn_began, in_turn = time.perf_counter(), True
            try:
                for events in batches:
                    for event in events:
                        # One chunk can hold thousands of small frames: apply the limits per
                        # request, so replies never pile up (backpressure, nothing dropped).
                        if self._backlogged(limits):
                            self._charge(turn_began)
                            in_turn = False
                            await self._wait_for_room(limits)
                            turn_began, in_turn = time.perf_counter(), True
                        if self.closing:
                            return
                        if isinstance(event, Request):
                            self._dispatch(nursery, event)
                        elif isinstance(event, Violation) and self._violation(event):
                            return
                        # Responses and notifications from a client are ignored.
                        if time.perf_counter() - turn_began > TURN_BUDGET:
                            in_turn = False
                            await self._give_turn(turn_began)
                            turn_began, in_turn = time.perf_counter(), True
                    if time.perf_counter() - turn_began > TURN_BUDGET:
                        in_turn = False
                        await self._give_turn(turn_began)
                        turn_began, in_turn = time.perf_counter(), True
            finally:
                replies.hold = False
                if in_turn:
                    self._charge(turn_began)
            # The frame deadline is the peer's: our waits for its share do not count.
            self._track_frame(now + self.held_for - held_before, frames_before)
            if replies.pending:
                await replies.flush()  # inline replies leave now, without waking the writer
                if replies.broken:
                    return

    def _track_frame(self, began: float, frames_before: int) -> None:
        """After a chunk: no frame half-received (None), or when the incomplete one began
        (``began`` if it is new since ``frames_before``; kept if it is still the same)."""
        parser = self.parser
        if not parser.partial_bytes:
            self.frame_started = None
        elif self.frame_started is None or parser.frames != frames_before:
            self.frame_started = began

    async def _receive(self) -> bytes | list[Event]:
        """The next chunk (b"" at EOF), or the events the fast path left to this task.

        With the server's poller running, the reader parks there: while it stays parked, the
        poller runs its fast path (``on_readable``) for every chunk that needs no wait."""
        poller = self.dispatch.poller
        while poller.running:
            got = await poller.wait(self.fd, self)
            if got is not STOPPED:
                return got  # type: ignore[no-any-return]
        return await self.inbound.receive()

    # -- the fast path, run by the poller while the reader is parked ----------------------------
    def on_readable(self) -> None:
        """The poller found this parked reader's socket readable: read and answer here, in the
        connection's context, or hand the reader task what needs a wait (``poller.py``)."""
        try:
            left = self._context.run(self._fast_read)
        except Exception as exc:  # raised in the reader task, as if it had happened there
            self.dispatch.poller.wake(self.fd, self, outcome.Error(exc))
            return
        if left is not None:
            self.dispatch.poller.wake(self.fd, self, outcome.Value(left))

    def _fast_read(self) -> bytes | list[Event] | None:
        """One chunk read and dispatched without a wait: None when done (the reader stays
        parked), else what the reader task must do: bytes to work through (EOF: b"", or a chunk
        larger than one slice), the events left undone (possibly none: a wait comes first)."""
        limits = self.dispatch.limits
        if self._owed or self.closing or self._backlogged(limits):
            return []  # the task holds back, waits for room or ends, then reads
        data = self.inbound.read_now()
        if data is None:
            return None
        if not data or len(data) > FEED_SLICE:
            return data
        parser, replies, nursery = self.parser, self.replies, self._nursery
        assert nursery is not None  # parked only inside ``_read_loop``
        now = self.last_active = self._now()
        frames_before = parser.frames
        replies.hold = True
        turn_began = time.perf_counter()
        try:
            events = parser.feed(data)
            self._track_frame(now, frames_before)
            for i, event in enumerate(events):
                if self._backlogged(limits) or self.closing:
                    return events[i:]
                if isinstance(event, Request):
                    self._dispatch(nursery, event)
                elif isinstance(event, Violation) and self._violation(event):
                    return []  # closing: the task ends the connection
                if time.perf_counter() - turn_began > TURN_BUDGET:
                    return events[i + 1 :]  # the task goes on in its own turn
        finally:
            replies.hold = False
            self._charge(turn_began)
            if replies.pending:
                self.dispatch.poller.send_after_pass(replies)  # with the pass's others
        if replies.broken:
            return b""  # the peer went away: the task ends the connection
        return [] if self._owed else None

    def _charge(self, turn_began: float) -> None:
        """Charge the work since ``turn_began`` to the peer's share (``share.py``)."""
        # The turn's decoding and inline work, and every write of replies since the last charge
        # (a flood's replies are most of its cost: 3.5 KB per ``status``).
        spent = time.perf_counter() - turn_began + self.replies.take_write_seconds()
        now = self._now()
        self._owed = self.dispatch.shares.charge(self.peer.pid, self.conn_id, spent, now)

    async def _give_turn(self, turn_began: float) -> None:
        """Send what this turn answered, then let every other runnable task run once, or wait
        while the peer is over its share of a busy loop."""
        self._charge(turn_began)
        if self.replies.pending:
            await self.replies.flush()
        if self._owed:
            await self._hold_back()
        else:
            await trio.lowlevel.checkpoint()

    async def _hold_back(self) -> None:
        """Wait what the peer owes (``_owed``): it took more than its share of a busy loop."""
        self.dispatch.counters.held_back += 1
        await trio.sleep(self._owed)
        self.held_for += self._owed  # the frame deadline is the peer's: our waits do not count
        if self.frame_started is not None:
            self.frame_started += self._owed
        self._owed = 0.0

    async def _peer_stopped_sending(self) -> None:
        """EOF: a peer that closed is gone (its in-flight work is cancelled by the caller); one
        that only shut its write side still gets its replies, so wait for them while it stays."""
        if not self.in_flight or self.inbound.hung_up():
            return
        self.half_closed = True
        while self.in_flight and not self.replies.broken:
            if self.inbound.hung_up():
                return
            with trio.move_on_after(HANGUP_POLL):
                self.room = trio.Event()
                await self.room.wait()

    def _violation(self, v: Violation) -> bool:
        """Answer a violation; True when the connection must close."""
        self.dispatch.counters.protocol_errors += 1
        skipped = self.dispatch.peer_log.due(self.peer, "conn.protocol_error", v.code)
        if skipped is not None:  # at most one line a second per uid and code
            log.warning(
                "conn.protocol_error",
                code=v.code,
                detail=clamp(v.message),
                msgid=v.msgid,
                not_logged_since=skipped or None,
            )
        if v.msgid is not None and not v.fatal:
            self.send(encode_response(v.msgid, error_map(v.code, v.message), None))
            return False
        if v.msgid is not None:
            self.send(encode_response(v.msgid, error_map(v.code, v.message), None))
        self.send(encode_notification("protocol_error", {"code": v.code, "message": v.message}))
        self.closing = True
        self._penalize()
        return True

    def _dispatch(self, nursery: trio.Nursery, req: Request) -> None:
        dispatch = self.dispatch
        counters = dispatch.counters
        counters.requests += 1
        method = dispatch.methods.get(req.method)
        if method is None:
            known = ", ".join(sorted(dispatch.methods))
            msg = f"unknown method {excerpt(req.method)}; this server knows: {known}"
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
                self.send(self._inline_reply(method, ctx, req))
                return
            prepared: Any = req.args
            if method.precheck is not None:
                dispatch.note_activity()
                prepared = method.precheck(ctx, req.args)
                if isinstance(prepared, Answered):
                    packed = prepared.packed
                    if packed is not None:
                        self.send(encode_response_body(req.msgid, packed))
                    else:
                        self.send(pack_reply(req.msgid, prepared.result))
                    return
                if isinstance(prepared, Later):
                    await_later(self, prepared, req)
                    return
        except Refusal as exc:
            self.send(pack_error(req.msgid, exc.to_wire()))
            drop_traceback(exc)
            return
        except Exception:
            log.exception("server.handler_crashed", method=req.method, msgid=req.msgid)
            wire = InternalRefusal("internal error; see the daemon log").to_wire()
            self.send(pack_error(req.msgid, wire))
            return
        assert method.handler is not None
        self.in_flight += 1
        dispatch.begin_request()
        nursery.start_soon(run_request, self, method.handler, ctx, req, prepared)

    def finish_request(self) -> None:
        """A request handed to a task or a ``Later`` has its reply queued: it is no longer in
        flight (``answers.py``)."""
        self.in_flight -= 1
        self.last_active = self._now()
        self.room.set()
        self.dispatch.end_request()

    def _inline_reply(self, method: Method, ctx: RequestContext, req: Request) -> bytes:
        """An inline method's reply; a shared one (no arguments) comes from the dispatch's
        cache of packed answers. Raises what the method raises."""
        assert method.inline is not None
        if method.shared and not req.args:
            return self.dispatch.shared_reply(method, ctx, req.msgid)
        self.dispatch.note_activity()
        return pack_reply(req.msgid, method.inline(ctx, req.args))
