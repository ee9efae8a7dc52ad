"""The asyncio client: one connection, many calls in flight, replies matched by msgid.

    async with AsyncioClient() as kiln:
        reply = await kiln.call("me")

    kiln = await AsyncioClient.connect()
    ...
    await kiln.aclose()

Contract: the same as ``TrioClient`` (``daemon/client_trio.py``). Replies are read by an
``asyncio.Protocol`` (no reader task): its ``data_received`` resolves the waiting callers'
futures; ``connection_lost`` fails the calls in flight with ``ConnectionLost``. Writes respect
the transport's flow control (a caller waits while the daemon applies backpressure).
``on_notification`` runs in ``data_received``; if it raises, asyncio reports the error and the
connection is closed.
"""

# The API takes `timeout=` per call (as the sync client does): one signature in all flavors.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from claykiln.daemon.client._core import (
    RECV_SIZE,
    UNSET,
    CallLedger,
    NotificationHandler,
    breaker_force_args,
    call_args,
    call_timeout,
    client_timeout_error,
    resolve_timeout,
)
from claykiln.daemon.client._errors import ConnectionLost, DaemonUnavailable
from claykiln.daemon.client._paths import client_socket_path

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


class AsyncioClient:
    """A pipelining asyncio client (see the module docstring for the contract)."""

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
        self._connect_lock: asyncio.Lock | None = None
        self._conn: _KilnProtocol | None = None
        self._closed = False

    @classmethod
    async def connect(
        cls,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        on_notification: NotificationHandler | None = None,
    ) -> AsyncioClient:
        """A connected client; ``aclose()`` it when done. Raises ``DaemonUnavailable``."""
        client = cls(
            socket_path,
            timeout=timeout,
            connect_timeout=connect_timeout,
            on_notification=on_notification,
        )
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

    @property
    def in_flight(self) -> int:
        """Replies the current connection still expects (abandoned calls included)."""
        conn = self._conn
        return conn.ledger.in_flight if conn is not None else 0

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with ``ConnectionLost``, later calls
        raise ``RuntimeError``. Idempotent."""
        self._closed = True
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.ledger.fail_all(lambda: ConnectionLost("the client was closed"))
            if conn.transport is not None:
                conn.transport.close()

    close = aclose

    async def _connection(self) -> _KilnProtocol:
        """The live connection, opening a new one when there is none or it failed."""
        if self._closed:
            msg = "this AsyncioClient was closed; create a new one"
            raise RuntimeError(msg)
        conn = self._conn
        if conn is not None and conn.ledger.failure is None:
            return conn
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.ledger.failure is None:
                return conn
            conn = await self._open()
            self._conn = conn
            return conn

    async def _open(self) -> _KilnProtocol:
        loop = asyncio.get_running_loop()
        path = self.socket_path
        protocol = _KilnProtocol(path, self._on_notification)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_unix_connection(lambda: protocol, str(path))
        except TimeoutError:
            raise DaemonUnavailable.at(path, "connect timed out") from None
        except OSError as exc:
            raise DaemonUnavailable.at(path, exc.strerror or type(exc).__name__) from None
        return protocol

    # -- the generic call ------------------------------------------------------------------

    async def request(
        self, method: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and return its result, or raise the mapped ``KilnError``."""
        return await self._request(method, args, resolve_timeout(timeout, self.timeout))

    async def _request(self, method: str, args: Mapping[str, Any] | None, timeout: float) -> Any:
        conn = await self._connection()
        replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not replied.done():
                replied.set_result(None)

        call, frame = conn.ledger.start(method, args, wake)
        try:
            async with asyncio.timeout(None if math.isinf(timeout) else timeout):
                await conn.wait_writable()
                if not call.done:
                    assert conn.transport is not None
                    conn.transport.write(frame)  # buffered whole: never a partial frame
                    await replied
        except TimeoutError:
            pass  # decided below: a reply that raced the deadline still wins
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
