"""The Unix-socket msgpack-rpc server: accept loop, connection limits, idle sweep, drain.

Promises:
- Max connections: the next connection gets a ``protocol_error`` notification
  (``too_many_connections``) and is closed; a peer outside the allowed uids/gids gets
  ``forbidden`` the same way. A failed ``accept()`` (e.g. out of file descriptors) is logged
  and retried after 0.1 s.
- Idle timeout: a connection with nothing in flight and nothing received for ``idle_timeout``
  seconds is closed (one sweeper task, not a timeout around every receive).
- ``drain(grace)``: stop accepting connections, answer new requests with ``shutting_down``, wait
  up to ``grace`` seconds for in-flight requests, then cancel what is left.

What happens on one connection (pipelining, batched replies, inline methods and prechecks,
per-connection backpressure, hostile input, hangups) is promised by ``connection.py``; a
connection sees the server only through its ``Dispatch`` (``dispatch.py``: method table, limits,
admin check, counters, in-flight bookkeeping). The value types ``ServerLimits``,
``RequestContext`` and ``Method`` live in ``types.py`` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping
from typing import Any

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
                conns.start_soon(self._sweep_idle)
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

    async def _sweep_idle(self) -> None:
        """Close connections idle past ``idle_timeout`` (one sweeper instead of a timeout
        around every receive: that cost ~8 us per request on the hot path)."""
        limit = self.limits.idle_timeout
        period = min(max(limit / 8, 0.01), 30.0)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for conn in list(self._live):
                if conn.idle_for(now) >= limit:
                    log.info("conn.idle_closed", conn_id=conn.conn_id, idle_timeout=limit)
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
            if not self.is_allowed(peer):
                log.warning("conn.refused", reason="peer not in allowed uids/gids", gid=peer.gid)
                msg = f"uid {peer.uid} / gid {peer.gid} is not allowed to use this daemon"
                await self._refuse(stream, "forbidden", msg)
                return
            counters = self.counters
            if counters.connections >= self.limits.max_connections:
                log.warning("conn.refused", reason="too many connections")
                msg = f"the daemon already serves {self.limits.max_connections} connections"
                await self._refuse(stream, "too_many_connections", msg)
                return
            counters.connections += 1
            counters.connections_total += 1
            conn = Connection(self.dispatch, stream, conn_id, peer)
            self._live.add(conn)
            try:
                await conn.run()
            finally:
                counters.connections -= 1
                self._live.discard(conn)
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await stream.aclose()

    async def _refuse(self, stream: trio.SocketStream, code: str, message: str) -> None:
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.send_all(encode_notification("protocol_error", error_map(code, message)))

    async def drain(self, grace: float) -> bool:
        """Stop accepting; wait up to ``grace`` s for in-flight requests. True if all finished."""
        self.counters.draining = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        with trio.move_on_after(grace):
            await self.dispatch.wait_idle()
        finished = self.counters.in_flight == 0
        # Let every writer put its last replies on the wire before the connections go.
        for conn in list(self._live):
            conn.close_output()
        with trio.move_on_after(WRITER_FLUSH_TIMEOUT):
            for conn in list(self._live):
                await conn.flushed.wait()
        self._conn_scope.cancel()
        return finished

    def cut_drain_short(self) -> None:
        """Cancel every connection now (a second SIGTERM during the drain)."""
        self._conn_scope.cancel()
