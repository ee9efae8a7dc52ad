"""The trio client: one connection, many calls in flight, replies matched by msgid.

    async with TrioClient() as kiln:                      # owns a nursery for its reader task
        reply = await kiln.call("me")

    kiln = await TrioClient.connect(nursery=nursery)      # reader task runs in your nursery
    ...
    await kiln.aclose()

Contract: the same as ``Client`` (``_sync.py``: waiting for a restarting daemon, sending a
lost call again where that is safe), plus pipelining: any number of tasks may call at once; a
reader task demultiplexes replies (in any order) to the waiting callers through one
``trio.Event`` per call. ``async with TrioClient()`` connects at entry (``DaemonUnavailable``
once ``connect_timeout`` is spent). A connection whose daemon answered ``shutting_down`` takes
no new calls; the calls already on it finish there.

Processes: a TrioClient belongs to the ``trio.run`` that connected it. After ``os.fork()`` it
raises ``RuntimeError`` in the child (trio's own state does not survive a fork): create a new
client in the child's own ``trio.run``.

Cancellation: a cancelled or timed-out call is abandoned (its late reply is dropped); if the
cancellation interrupted its request half-sent, the connection is unusable and the other calls
in flight fail with ``ConnectionLost``. ``on_notification`` runs in the reader task; if it
raises, the exception propagates out of the client's nursery.
"""

# The API takes `timeout=` per call (as the sync client does): one signature in all flavors.
# ruff: noqa: ASYNC109

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final, Unpack

import trio

from claykiln.daemon.client._async import AsyncFront
from claykiln.daemon.client._core import (
    RECV_SIZE,
    CallLedger,
    PendingCall,
    client_timeout_error,
)
from claykiln.daemon.client._errors import ConnectionLost
from claykiln.daemon.client._methods import ClientOptions, Rpc

__all__ = ["TrioClient"]

# Seconds a failed send waits for the reader to pick up the daemon's last words.
SEND_FAILURE_GRACE: Final = 1.0


class _Connection:
    """One socket stream, the calls in flight on it, and its reader's cancel scope."""

    __slots__ = ("ledger", "reader_done", "reader_scope", "send_lock", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ledger = CallLedger()
        self.send_lock = trio.Lock()
        self.reader_scope = trio.CancelScope()
        self.reader_done = trio.Event()


class TrioClient(AsyncFront[_Connection]):
    """A pipelining trio client (see the module docstring for the contract; the options:
    ``ClientSurface``)."""

    def _init_connections(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._connect_lock = trio.Lock()
        self._conn: _Connection | None = None
        self._live: set[_Connection] = set()  # the current one, and retired ones finishing

    @classmethod
    async def connect(
        cls,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        nursery: trio.Nursery,
        **options: Unpack[ClientOptions],
    ) -> TrioClient:
        """A connected client whose reader task runs in ``nursery``; ``aclose()`` it when done.

        Raises ``DaemonUnavailable`` when the daemon cannot be reached.
        """
        client = cls(socket_path, **options)
        client._nursery = nursery
        await client._connection()
        return client

    async def __aenter__(self) -> TrioClient:
        stream = await self._open_stream()
        manager = trio.open_nursery()
        self._nursery_manager = manager
        self._nursery = await manager.__aenter__()
        self._install(stream)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        await self.aclose()
        manager = self._nursery_manager
        if manager is None:
            return False
        self._nursery_manager = None
        try:
            return bool(await manager.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            # The reader never raised: hand the body's own exception back unwrapped.
            if exc is not None and list(group.exceptions) == [exc]:
                return False
            raise

    async def aclose(self) -> None:
        """Close the connection and stop the reader; calls in flight fail with
        ``ConnectionLost``, later calls raise ``RuntimeError``. Idempotent; never blocks."""
        self._closed = True
        self._conn = None
        for conn in list(self._live):
            conn.ledger.fail_all(lambda: ConnectionLost("the client was closed"))
            conn.reader_scope.cancel()
            with trio.CancelScope(shield=True):
                await conn.stream.aclose()

    close = aclose

    # -- connection management ---------------------------------------------------------------

    async def _open_stream(self) -> trio.SocketStream:
        self._check_process()
        return await self._wait_for_daemon(self._open_once)

    async def _open_once(self, seconds: float) -> trio.SocketStream:
        try:
            with trio.fail_after(seconds):
                return await trio.open_unix_socket(str(self.socket_path))
        except trio.TooSlowError:
            raise TimeoutError from None

    def _now(self) -> float:
        return trio.current_time()

    async def _sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            msg = (
                "this TrioClient was created before os.fork() and belongs to the parent's "
                "trio.run; create a new TrioClient in the child"
            )
            raise RuntimeError(msg)

    def _install(self, stream: trio.SocketStream) -> _Connection:
        assert self._nursery is not None
        conn = _Connection(stream)
        self._conn = conn
        self._live.add(conn)
        self._nursery.start_soon(self._read_loop, conn)
        return conn

    async def _connection(self) -> _Connection:
        """The live connection, opening a new one when there is none or it failed."""
        if self._closed:
            msg = "this TrioClient was closed; create a new one"
            raise RuntimeError(msg)
        self._check_process()
        conn = self._conn
        if conn is not None and conn.ledger.failure is None:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.ledger.failure is None:
                return conn
            if self._nursery is None:
                msg = "use `async with TrioClient(...)` or `await TrioClient.connect(nursery=...)`"
                raise RuntimeError(msg)
            return self._install(await self._open_stream())

    def _retire(self, conn: _Connection) -> None:
        """Send no new calls on ``conn`` (its daemon is draining); those on it finish there."""
        if self._conn is conn:
            self._conn = None

    def _lose(self, conn: _Connection, why: str) -> None:
        """Fail the calls in flight on ``conn`` with ``ConnectionLost`` and stop its reader."""
        msg = f"connection to {self.socket_path} lost with the call in flight: {why}"
        conn.ledger.fail_all(lambda: ConnectionLost(msg))
        conn.reader_scope.cancel()
        if self._conn is conn:
            self._conn = None

    async def _read_loop(self, conn: _Connection) -> None:
        """Read replies until EOF, an error, a protocol violation, or cancellation."""
        try:
            with conn.reader_scope:
                while conn.ledger.failure is None:
                    try:
                        data = await conn.stream.receive_some(RECV_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        self._lose(conn, f"reading failed: {exc}")
                        break
                    if not data:
                        self._lose(conn, "the daemon closed the connection")
                        break
                    notifications = conn.ledger.receive(data)
                    if conn.ledger.failure is not None:
                        self._lose(conn, "protocol violation")
                    if self._on_notification is not None:
                        for note in notifications:
                            self._on_notification(note.method, note.args)
        finally:
            self._lose(conn, "the connection was closed")
            self._live.discard(conn)
            conn.reader_done.set()
            with trio.CancelScope(shield=True):
                await conn.stream.aclose()

    async def _send(self, conn: _Connection, call: PendingCall, frame: bytes) -> None:
        """Send ``frame``; a failure or a cancellation after a partial send loses ``conn``.

        After a failed send the reader gets ``SEND_FAILURE_GRACE`` seconds to read what the
        daemon said before closing (a ``protocol_error`` such as ``frame_too_large``), so the
        calls fail with that reason rather than a bare ``ConnectionLost``.
        """
        sent = 0
        view = memoryview(frame)
        async with conn.send_lock:
            if call.done:  # the connection failed while this call waited to send
                return
            try:
                while sent < len(view):
                    sent += await conn.stream.socket.send(view[sent:])
                call.sent = True
            except trio.ClosedResourceError:
                # The reader closed the stream: the ledger already failed, with the reason.
                self._lose(conn, "the connection was closed while sending")
            except OSError as exc:
                with contextlib.suppress(OSError):
                    conn.stream.socket.shutdown(trio.socket.SHUT_WR)
                with trio.move_on_after(SEND_FAILURE_GRACE):
                    await conn.reader_done.wait()
                self._lose(conn, f"sending failed: {_reason(exc)}")
            except BaseException:
                if sent:  # a partial frame on the wire corrupts the stream for every call
                    self._lose(conn, f"the request {call.msgid} was interrupted mid-send")
                raise

    async def _exchange(self, conn: _Connection, rpc: Rpc, timeout: float) -> PendingCall:
        """Send ``rpc`` on ``conn`` and wait until it is resolved; ``KilnTimeout`` after
        ``timeout`` seconds (the call is then abandoned: its late reply is dropped)."""
        replied = trio.Event()
        call, frame = conn.ledger.start(rpc.method, rpc.args, replied.set)
        try:
            with trio.move_on_after(timeout):
                await self._send(conn, call, frame)
                await replied.wait()
        finally:
            if not call.done:
                conn.ledger.abandon(call)
        if call.abandoned:
            raise client_timeout_error(rpc.method, timeout)
        return call


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
