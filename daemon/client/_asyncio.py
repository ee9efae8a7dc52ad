"""The asyncio client: one connection, many calls in flight, replies matched by msgid.

    async with AsyncioClient() as kiln:
        reply = await kiln.call("me")

    kiln = await AsyncioClient.connect()
    ...
    await kiln.aclose()

Contract: the same as ``TrioClient`` (``_trio.py``). Replies are read by an
``asyncio.Protocol`` (no reader task): its ``data_received`` resolves the waiting callers'
futures; ``connection_lost`` fails the calls in flight with ``ConnectionLost``. Writes respect
the transport's flow control (a caller waits while the daemon applies backpressure).
``on_notification`` runs in ``data_received``; if it raises, asyncio reports the error and the
connection is closed.

Processes: after ``os.fork()``, a client used in the child (under its own event loop) forgets
the parent's connection without touching it (the parent's loop state is shared memory gone
stale in the child) and opens its own.
"""

# The API takes `timeout=` per call (as the sync client does): one signature in all flavors.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Unpack

from claykiln.daemon.client._async import AsyncFront
from claykiln.daemon.client._core import (
    RECV_SIZE,
    CallLedger,
    NotificationHandler,
    PendingCall,
    client_timeout_error,
)
from claykiln.daemon.client._errors import ConnectionLost
from claykiln.daemon.client._methods import ClientOptions, Rpc

__all__ = ["AsyncioClient"]


class _KilnProtocol(asyncio.Protocol):
    """One connection: feeds the ledger, tracks flow control and connection loss."""

    def __init__(self, socket_path: Path, on_notification: NotificationHandler | None) -> None:
        self.ledger = CallLedger()
        self.transport: asyncio.Transport | None = None
        self._socket_path = socket_path
        self._on_notification = on_notification
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        notifications = self.ledger.receive(data)
        if self.ledger.failure is not None and self.transport is not None:
            self.transport.close()
        if self._on_notification is not None:
            for note in notifications:
                self._on_notification(note.method, note.args)

    def eof_received(self) -> bool:
        self.lose("the daemon closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._salvage()
        self.lose(f"the connection was closed ({exc})" if exc else "the connection was closed")
        self._writable.set()  # release writers; they find the ledger failed

    def _salvage(self) -> None:
        """After a failed write, read what the daemon said before closing.

        asyncio stops reading when a write fails (EPIPE), but the daemon's last words (a
        ``protocol_error`` such as ``frame_too_large``) are usually in the receive buffer. The
        socket is still open during ``connection_lost``: read a duplicate of it, non-blocking.
        """
        if self.ledger.failure is not None or self.transport is None:
            return
        transport_socket = self.transport.get_extra_info("socket")
        fd = transport_socket.fileno() if transport_socket is not None else -1
        if fd < 0:
            return
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as dup:
            dup.setblocking(False)
            while self.ledger.failure is None:
                data = dup.recv(RECV_SIZE)
                if not data:
                    break
                self.data_received(data)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def wait_writable(self) -> None:
        await self._writable.wait()

    def lose(self, why: str) -> None:
        """Fail the calls in flight with ``ConnectionLost`` and close the transport."""
        msg = f"connection to {self._socket_path} lost with the call in flight: {why}"
        self.ledger.fail_all(lambda: ConnectionLost(msg))
        if self.transport is not None:
            self.transport.close()


class AsyncioClient(AsyncFront[_KilnProtocol]):
    """A pipelining asyncio client (see the module docstring for the contract; the options:
    ``ClientSurface``)."""

    def _init_connections(self) -> None:
        self._connect_lock: asyncio.Lock | None = None
        self._conn: _KilnProtocol | None = None
        self._live: set[_KilnProtocol] = set()  # the current one, and retired ones finishing

    @classmethod
    async def connect(
        cls, socket_path: str | os.PathLike[str] | None = None, **options: Unpack[ClientOptions]
    ) -> AsyncioClient:
        """A connected client; ``aclose()`` it when done. Raises ``DaemonUnavailable``."""
        client = cls(socket_path, **options)
        await client._connection()
        return client

    async def __aenter__(self) -> AsyncioClient:
        await self._connection()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with ``ConnectionLost``, later calls
        raise ``RuntimeError``. Idempotent."""
        self._closed = True
        self._conn = None
        for conn in list(self._live):
            conn.ledger.fail_all(lambda: ConnectionLost("the client was closed"))
            if conn.transport is not None:
                conn.transport.close()
        self._live.clear()

    close = aclose

    async def _connection(self) -> _KilnProtocol:
        """The live connection, opening a new one when there is none or it failed."""
        if self._closed:
            msg = "this AsyncioClient was closed; create a new one"
            raise RuntimeError(msg)
        if self._pid != os.getpid():
            self._forget_parent()
        conn = self._conn
        if conn is not None and conn.ledger.failure is None:
            return conn
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.ledger.failure is None:
                return conn
            conn = await self._wait_for_daemon(self._open_once)
            self._live = {c for c in self._live if c.ledger.failure is None}
            self._live.add(conn)
            self._conn = conn
            return conn

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's connections and lock, never touching them
        (closing a transport would unregister it from the event loop the parent still runs)."""
        self._pid = os.getpid()
        self._conn = None
        self._live = set()
        self._connect_lock = None

    async def _open_once(self, seconds: float) -> _KilnProtocol:
        loop = asyncio.get_running_loop()
        protocol = _KilnProtocol(self.socket_path, self._on_notification)
        async with asyncio.timeout(seconds):
            await loop.create_unix_connection(lambda: protocol, str(self.socket_path))
        return protocol

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _retire(self, conn: _KilnProtocol) -> None:
        """Send no new calls on ``conn`` (its daemon is draining); those on it finish there."""
        if self._conn is conn:
            self._conn = None

    async def _exchange(self, conn: _KilnProtocol, rpc: Rpc, timeout: float) -> PendingCall:
        """Send ``rpc`` on ``conn`` and wait until it is resolved; ``KilnTimeout`` after
        ``timeout`` seconds (the call is then abandoned: its late reply is dropped)."""
        replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not replied.done():
                replied.set_result(None)

        call, frame = conn.ledger.start(rpc.method, rpc.args, wake)
        try:
            async with asyncio.timeout(None if math.isinf(timeout) else timeout):
                await conn.wait_writable()
                if not call.done:
                    assert conn.transport is not None
                    conn.transport.write(frame)  # buffered whole: never a partial frame
                    call.sent = True
                    await replied
        except TimeoutError:
            pass  # decided below: a reply that raced the deadline still wins
        finally:
            if not call.done:
                conn.ledger.abandon(call)
        if call.abandoned:
            raise client_timeout_error(rpc.method, timeout)
        return call
