"""The Unix-socket msgpack-rpc server: accept loop, connection limits, idle sweep, drain.

Promises:
- Max connections, in all (``max_connections``) and per peer uid (``max_connections_per_uid``,
  so one local user cannot take every slot): the next connection gets a ``protocol_error``
  notification (``too_many_connections``) and is closed; a peer outside the allowed uids/gids
  gets ``forbidden`` the same way. Each refusal is logged (``conn.refused``, with the peer's
  uid and pid) at most once per second per uid and reason (``PeerLog``), with a count of those
  left out. A failed ``accept()`` (e.g. out of file descriptors) is logged and retried after
  0.1 s.
- One sweeper task (not a timeout around every receive) closes: a connection with nothing in
  flight, owed or received for ``idle_timeout`` seconds; one whose incomplete frame is older
  than ``frame_timeout`` (``protocol_error`` ``frame_timeout``: a drip-feeder cannot hold a
  slot); one whose replies have waited ``reply_timeout`` with not one byte read (cut off).
- ``drain(grace)``: stop accepting connections, answer new requests with ``shutting_down``, wait
  up to ``grace`` seconds for in-flight requests (less after ``cut_drain_short``: a second
  SIGTERM), then cancel what is left: each cancelled request is answered ``shutting_down``
  with ``details.started = true`` before its connection closes, never a bare EOF.

What happens on one connection (pipelining, batched replies, inline methods and prechecks,
per-connection backpressure, hostile input, hangups) is promised by ``connection.py``; a
connection sees the server only through its ``Dispatch`` (``dispatch.py``: method table, limits,
admin check, counters, in-flight bookkeeping). The value types ``ServerLimits``,
``RequestContext`` and ``Method`` live in ``types.py`` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog
import trio

from claykiln.daemon.logs import get_logger
from claykiln.daemon.rpc.connection import WRITER_FLUSH_TIMEOUT, Connection
from claykiln.daemon.rpc.dispatch import Dispatch, ServerCounters
from claykiln.daemon.rpc.listener import PeerCred, peer_credentials
from claykiln.daemon.rpc.protocol import encode_notification, error_map
from claykiln.daemon.rpc.types import Method, RequestContext, ServerLimits

__all__ = ["Method", "RequestContext", "Server", "ServerLimits"]

log = get_logger("claykiln.server")

CUT_SHORT_FLUSH: Final = 1.0  # seconds the last replies get after a second SIGTERM


class Server:
    """Accepts connections on a listening socket and runs the registered methods."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        limits: ServerLimits | None = None,
        *,
        is_admin: Callable[[PeerCred], bool] = lambda peer: True,
        is_allowed: Callable[[PeerCred], bool] = lambda peer: True,
        counters: ServerCounters | None = None,
    ) -> None:
        self.limits = limits or ServerLimits()
        self.is_allowed = is_allowed
        self.counters = counters or ServerCounters()
        self.dispatch = Dispatch(methods, self.limits, is_admin, self.counters)
        self._ids = itertools.count(1)
        self._accept_scope: trio.CancelScope | None = None
        self._conn_scope = trio.CancelScope()
        self._live: set[Connection] = set()
        self._per_uid: Counter[int] = Counter()
        self._hurry = trio.Event()
        self._flushing = False

    @property
    def connections(self) -> int:
        return self.counters.connections

    @property
    def in_flight(self) -> int:
        return self.counters.in_flight

    @property
    def draining(self) -> bool:
        return self.counters.draining

    def stats(self) -> dict[str, Any]:
        """The ``server`` section of ``status``."""
        return self.counters.view()

    # -- serving -------------------------------------------------------------------------------
    async def serve(
        self,
        listener: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept until drained or cancelled; connections live in their own nursery."""
        with self._conn_scope:
            async with trio.open_nursery() as conns:
                conns.start_soon(self._sweep)
                conns.start_soon(self.dispatch.poller.run)
                with trio.CancelScope() as accept_scope:
                    self._accept_scope = accept_scope
                    task_status.started()
                    while True:
                        try:
                            sock, _ = await listener.accept()
                        except OSError as exc:
                            # EMFILE and friends: back off instead of spinning.
                            log.warning("server.accept_failed", error=str(exc))
                            await trio.sleep(0.1)
                            continue
                        conns.start_soon(self._handle, sock)
                listener.close()
                # Draining: the nursery waits for connections to finish on their own or until
                # drain() cancels _conn_scope at the end of the grace period.

    async def _sweep(self) -> None:
        """Close idle, drip-fed and stalled connections (one sweeper instead of a timeout
        around every receive: that cost ~8 us per request on the hot path)."""
        lim = self.limits
        period = min(lim.idle_timeout / 8, lim.frame_timeout / 4, lim.reply_timeout / 4, 30.0)
        period = max(period, 0.01)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for conn in list(self._live):
                if conn.closing:
                    continue
                if conn.replies.stalled_for(now) >= lim.reply_timeout:
                    log.warning(
                        "conn.reply_timeout",
                        conn_id=conn.conn_id,
                        uid=conn.peer.uid,
                        pid=conn.peer.pid,
                        unsent_bytes=conn.replies.unsent,
                        reply_timeout=lim.reply_timeout,
                    )
                    self.counters.cut_off += 1
                    conn.cut_off()
                elif conn.frame_age(now) >= lim.frame_timeout:
                    log.warning(
                        "conn.frame_timeout",
                        conn_id=conn.conn_id,
                        uid=conn.peer.uid,
                        pid=conn.peer.pid,
                        partial_bytes=conn.parser.partial_bytes,
                        frame_timeout=lim.frame_timeout,
                    )
                    self.counters.cut_off += 1
                    conn.expire_frame(lim.frame_timeout)
                elif conn.idle_for(now) >= lim.idle_timeout:
                    log.info(
                        "conn.idle_closed", conn_id=conn.conn_id, idle_timeout=lim.idle_timeout
                    )
                    conn.closing = True
                    conn.scope.cancel()

    async def _handle(self, sock: trio.socket.SocketType) -> None:
        stream = trio.SocketStream(sock)
        peer = peer_credentials(sock)
        conn_id = next(self._ids)
        structlog.contextvars.bind_contextvars(
            conn_id=conn_id, peer_pid=peer.pid, peer_uid=peer.uid
        )
        try:
            refusal = self._admission(peer)
            if refusal is not None:
                code, message = refusal
                self.counters.refused += 1
                await self._refuse(stream, code, message)
                return
            counters = self.counters
            counters.connections += 1
            counters.connections_total += 1
            self._per_uid[peer.uid] += 1
            conn = Connection(self.dispatch, stream, conn_id, peer)
            self._live.add(conn)
            try:
                await conn.run()
            finally:
                counters.connections -= 1
                self._per_uid[peer.uid] -= 1
                if not self._per_uid[peer.uid]:
                    del self._per_uid[peer.uid]
                self._live.discard(conn)
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await stream.aclose()

    def _admission(self, peer: PeerCred) -> tuple[str, str] | None:
        """None when ``peer`` may connect now, else the (code, message) that refuses it."""
        lim = self.limits
        if not self.is_allowed(peer):
            self._log_refusal(peer, "peer not in allowed uids/gids")
            return "forbidden", f"uid {peer.uid} / gid {peer.gid} is not allowed to use this daemon"
        if self.counters.connections >= lim.max_connections:
            self._log_refusal(peer, "too many connections", lim.max_connections)
            return "too_many_connections", (
                f"the daemon already serves {lim.max_connections} connections; retry later"
            )
        held = self._per_uid[peer.uid]
        if held >= lim.max_connections_per_uid:
            self._log_refusal(peer, "too many connections for the uid", lim.max_connections_per_uid)
            return "too_many_connections", (
                f"uid {peer.uid} already holds {held} connections, the most one uid may "
                f"([daemon.limits] max_connections_per_uid = {lim.max_connections_per_uid}); "
                "close some or share them"
            )
        return None

    def _log_refusal(self, peer: PeerCred, reason: str, limit: int | None = None) -> None:
        skipped = self.dispatch.peer_log.due(peer, "conn.refused", reason)
        if skipped is not None:
            log.warning(
                "conn.refused",
                reason=reason,
                uid=peer.uid,
                pid=peer.pid,
                gid=peer.gid,
                limit=limit,
                not_logged_since=skipped or None,
            )

    async def _refuse(self, stream: trio.SocketStream, code: str, message: str) -> None:
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.send_all(encode_notification("protocol_error", error_map(code, message)))

    async def drain(self, grace: float) -> bool:
        """Stop accepting; wait up to ``grace`` s for in-flight requests (less when cut short).
        True if all finished; the rest are answered ``shutting_down`` and cancelled."""
        self.counters.draining = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        with trio.move_on_after(grace):
            async with trio.open_nursery() as wait:

                async def idle() -> None:
                    await self.dispatch.wait_idle()
                    wait.cancel_scope.cancel()

                async def hurried() -> None:
                    await self._hurry.wait()
                    wait.cancel_scope.cancel()

                wait.start_soon(idle)
                wait.start_soon(hurried)
        finished = self.counters.in_flight == 0
        # Every connection stops: a request still running is cancelled and answered
        # shutting_down (started=true); the writers put the last replies on the wire.
        self._flushing = True
        for conn in list(self._live):
            conn.abort()
        flush = CUT_SHORT_FLUSH if self._hurry.is_set() else WRITER_FLUSH_TIMEOUT
        with trio.move_on_after(flush):
            for conn in list(self._live):
                await conn.flushed.wait()
        self._conn_scope.cancel()
        return finished

    def cut_drain_short(self) -> None:
        """A second SIGTERM during the drain: end the grace period now (in-flight requests are
        answered ``shutting_down``); during the final flush, close every connection at once."""
        self._hurry.set()
        if self._flushing:
            self._conn_scope.cancel()
