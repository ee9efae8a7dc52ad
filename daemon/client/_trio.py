"""The trio client: one connection, many calls in flight, replies matched by msgid.

    async with TrioClient() as kiln:                      # owns a nursery for its reader task
        reply = await kiln.call("me")

    kiln = await TrioClient.connect(nursery=nursery)      # reader task runs in your nursery
    ...
    await kiln.aclose()

Contract: the same as ``Client`` (``daemon/client_sync.py``), plus pipelining: any number of
tasks may call at once; a reader task demultiplexes replies (in any order) to the waiting
callers through one ``trio.Event`` per call. ``async with TrioClient()`` connects at entry
(``DaemonUnavailable`` at once when the daemon is down).

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
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import trio

from claykiln.daemon.client._core import (
    RECV_SIZE,
    UNSET,
    CallLedger,
    NotificationHandler,
    PendingCall,
    breaker_force_args,
    call_args,
    call_timeout,
    client_timeout_error,
    resolve_timeout,
)
from claykiln.daemon.client._errors import ConnectionLost, DaemonUnavailable
from claykiln.daemon.client._paths import client_socket_path

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


class TrioClient:
    """A pipelining trio client (see the module docstring for the contract)."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        on_notification: NotificationHandler | None = None,
    ) -> None:
        self.socket_path: Path = client_socket_path(socket_path)
        self.timeout = resolve_timeout(timeout, timeout)
        self.connect_timeout = resolve_timeout(connect_timeout, connect_timeout)
        self._on_notification = on_notification
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._connect_lock = trio.Lock()
        self._conn: _Connection | None = None
        self._closed = False

    @classmethod
    async def connect(
        cls,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        nursery: trio.Nursery,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        on_notification: NotificationHandler | None = None,
    ) -> TrioClient:
        """A connected client whose reader task runs in ``nursery``; ``aclose()`` it when done.

        Raises ``DaemonUnavailable`` when the daemon cannot be reached.
        """
        client = cls(
            socket_path,
            timeout=timeout,
            connect_timeout=connect_timeout,
            on_notification=on_notification,
        )
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

    @property
    def in_flight(self) -> int:
        """Replies the current connection still expects (abandoned calls included)."""
        conn = self._conn
        return conn.ledger.in_flight if conn is not None else 0

    async def aclose(self) -> None:
        """Close the connection and stop the reader; calls in flight fail with
        ``ConnectionLost``, later calls raise ``RuntimeError``. Idempotent; never blocks."""
        self._closed = True
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.ledger.fail_all(lambda: ConnectionLost("the client was closed"))
            conn.reader_scope.cancel()
            with trio.CancelScope(shield=True):
                await conn.stream.aclose()

    close = aclose

    # -- connection management ---------------------------------------------------------------

    async def _open_stream(self) -> trio.SocketStream:
        try:
            with trio.fail_after(self.connect_timeout):
                return await trio.open_unix_socket(str(self.socket_path))
        except trio.TooSlowError:
            raise DaemonUnavailable.at(self.socket_path, "connect timed out") from None
        except OSError as exc:
            raise DaemonUnavailable.at(self.socket_path, _reason(exc)) from None

    def _install(self, stream: trio.SocketStream) -> _Connection:
        assert self._nursery is not None
        conn = _Connection(stream)
        self._conn = conn
        self._nursery.start_soon(self._read_loop, conn)
        return conn

    async def _connection(self) -> _Connection:
        """The live connection, opening a new one when there is none or it failed."""
        if self._closed:
            msg = "this TrioClient was closed; create a new one"
            raise RuntimeError(msg)
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

    # -- the generic call ------------------------------------------------------------------

    async def request(
        self, method: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and return its result, or raise the mapped ``KilnError``."""
        return await self._request(method, args, resolve_timeout(timeout, self.timeout))

    async def _request(self, method: str, args: Mapping[str, Any] | None, timeout: float) -> Any:
        conn = await self._connection()
        replied = trio.Event()
        call, frame = conn.ledger.start(method, args, replied.set)
        try:
            with trio.move_on_after(timeout):
                await self._send(conn, call, frame)
                await replied.wait()
        finally:
            if not call.done:
                conn.ledger.abandon(call)
        if call.abandoned:
            raise client_timeout_error(method, timeout)
        return call.outcome()

    # -- the typed methods -----------------------------------------------------------------

    async def hello(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``hello``: ``{protocol, server, limits, admin}``."""
        result: dict[str, Any] = await self.request("hello", None, timeout=timeout)
        return result

    async def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``status``: uptime, version, counters, storage, actors and health."""
        result: dict[str, Any] = await self.request("status", None, timeout=timeout)
        return result

    async def call(
        self,
        operation: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        json: Any = UNSET,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        lane: str | None = None,
        deadline_ms: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``call``: run a configured operation; only the arguments given are sent.

        Returns ``{status, headers, body, attempts, duration_ms, ...}``. The client timeout
        defaults to ``deadline_ms`` plus a margin when a deadline is given.
        """
        args = call_args(
            operation,
            path_params=path_params,
            query=query,
            json=json,
            body=body,
            headers=headers,
            lane=lane,
            deadline_ms=deadline_ms,
            idempotency_key=idempotency_key,
        )
        result: dict[str, Any] = await self._request(
            "call", args, call_timeout(timeout, deadline_ms, self.timeout)
        )
        return result

    async def breaker_list(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """``breaker.list``: one map per breaker (``key``, ``state``, ``retry_after``, ...)."""
        result: list[dict[str, Any]] = await self.request("breaker.list", None, timeout=timeout)
        return result

    async def breaker_force(
        self, name: str, state: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``breaker.force`` (admin): ``open``, ``closed``, ``disabled`` or ``reset``.

        Returns the breaker's new view (as in ``breaker_list``).
        """
        args = breaker_force_args(name, state)
        result: dict[str, Any] = await self.request("breaker.force", args, timeout=timeout)
        return result


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
