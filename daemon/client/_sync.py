"""The blocking client: one plain Unix socket, one call at a time, safe to share between threads.

    with Client() as kiln:                       # socket: argument, $KILN_SOCKET, default
        reply = kiln.call("push_row", path_params={"webhook_id": "w1"}, json={"a": 1})

Contract (the same for ``TrioClient`` and ``AsyncioClient``):

- The connection opens lazily on the first call; a failed connect raises ``DaemonUnavailable``
  naming the socket path.
- A daemon error reply raises its ``KilnError`` subclass (``daemon/errors.py``).
- No reply within the timeout raises ``KilnTimeout`` with ``details["stage"] == "client"``; the
  late reply is read and dropped by a later call.
- A broken connection raises ``ConnectionLost`` for the call in flight; the call is never
  resent (it may have been delivered). The next call reconnects. A connection the daemon closed
  while idle is noticed before sending, so that call reconnects transparently.
- A ``protocol_error`` notification raises ``ProtocolViolation``; other notifications are passed
  to ``on_notification(method, args)`` while a call reads (never from another thread).

Calls are serialized by a lock: a thread waits for the call before it. ``close()`` may be
called from any thread; a call blocked in another thread then fails with ``ConnectionLost``.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

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

__all__ = ["Client"]


def _noop() -> None:
    """The wake-up of a blocking call: the caller polls ``PendingCall.done`` itself."""


class _Connection:
    """One socket and the calls in flight on it."""

    __slots__ = ("ledger", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ledger = CallLedger()


class Client:
    """A blocking claykiln client (see the module docstring for the contract)."""

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
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def in_flight(self) -> int:
        """Replies the current connection still expects (abandoned calls included)."""
        conn = self._conn
        return conn.ledger.in_flight if conn is not None else 0

    def close(self) -> None:
        """Close the connection; later calls raise ``RuntimeError``. Idempotent."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            # Wake a call blocked in recv in another thread before taking the lock.
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            if self._conn is not None:
                self._drop(self._conn, "the client was closed")

    # -- the generic call ------------------------------------------------------------------

    def request(
        self, method: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and return its result, or raise the mapped ``KilnError``."""
        return self._request(method, args, resolve_timeout(timeout, self.timeout))

    def _request(self, method: str, args: Mapping[str, Any] | None, timeout: float) -> Any:
        with self._lock:
            conn = self._usable_connection()
            deadline = time.monotonic() + timeout
            call, frame = conn.ledger.start(method, args, _noop)
            self._send(conn, call, frame, deadline, timeout)
            self._await_reply(conn, call, deadline, timeout)
            return call.outcome()

    def _usable_connection(self) -> _Connection:
        if self._closed:
            msg = "this Client was closed; create a new one"
            raise RuntimeError(msg)
        conn = self._conn
        if conn is not None and not self._read_available(conn):
            self._drop(conn, "the daemon closed the connection")
            conn = None
        if conn is None:
            conn = self._conn = _Connection(self._connect())
        return conn

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            reason = "connect timed out" if isinstance(exc, TimeoutError) else _reason(exc)
            raise DaemonUnavailable.at(self.socket_path, reason) from None
        return sock

    def _read_available(self, conn: _Connection) -> bool:
        """Feed whatever has arrived (late replies, notifications) to the ledger, never blocking.

        False when the connection is closed (EOF, error) or the ledger failed.
        """
        if conn.ledger.failure is not None:
            return False
        conn.sock.settimeout(0.0)
        while True:
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._dispatch(conn, data)
            if conn.ledger.failure is not None:
                return False

    def _send(
        self, conn: _Connection, call: PendingCall, frame: bytes, deadline: float, timeout: float
    ) -> None:
        try:
            conn.sock.settimeout(_remaining(deadline))
            conn.sock.sendall(frame)
        except TimeoutError:
            # Part of the frame may be on the wire: the stream is unusable. The daemon cannot
            # have read a whole request, so the call did not run.
            self._drop(conn, "a request could not be sent in time")
            raise client_timeout_error(call.method, timeout) from None
        except OSError as exc:
            # The daemon may have said why before closing (a protocol_error notification,
            # e.g. frame_too_large): read it so the call fails with that, not a bare EPIPE.
            self._read_available(conn)
            self._drop(conn, f"sending failed: {_reason(exc)}")

    def _await_reply(
        self, conn: _Connection, call: PendingCall, deadline: float, timeout: float
    ) -> None:
        while not call.done:
            try:
                conn.sock.settimeout(_remaining(deadline))
                data = conn.sock.recv(RECV_SIZE)
            except TimeoutError:
                conn.ledger.abandon(call)
                raise client_timeout_error(call.method, timeout) from None
            except OSError as exc:
                self._drop(conn, f"reading failed: {_reason(exc)}")
                return
            if not data:
                self._drop(conn, "the daemon closed the connection")
                return
            self._dispatch(conn, data)
            if conn.ledger.failure is not None:
                self._drop(conn, "protocol violation")

    def _dispatch(self, conn: _Connection, data: bytes) -> None:
        for note in conn.ledger.receive(data):
            if self._on_notification is not None:
                self._on_notification(note.method, note.args)

    def _drop(self, conn: _Connection, why: str) -> None:
        """Close ``conn``, failing whatever was in flight on it with ``ConnectionLost``."""
        msg = f"connection to {self.socket_path} lost with the call in flight: {why}"
        conn.ledger.fail_all(lambda: ConnectionLost(msg))
        conn.sock.close()
        if self._conn is conn:
            self._conn = None

    # -- the typed methods -----------------------------------------------------------------

    def hello(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``hello``: ``{protocol, server, limits, admin}``."""
        result: dict[str, Any] = self.request("hello", None, timeout=timeout)
        return result

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``status``: uptime, version, counters, storage, actors and health."""
        result: dict[str, Any] = self.request("status", None, timeout=timeout)
        return result

    def call(
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
        result: dict[str, Any] = self._request(
            "call", args, call_timeout(timeout, deadline_ms, self.timeout)
        )
        return result

    def breaker_list(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """``breaker.list``: one map per breaker (``key``, ``state``, ``retry_after``, ...)."""
        result: list[dict[str, Any]] = self.request("breaker.list", None, timeout=timeout)
        return result

    def breaker_force(
        self, name: str, state: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``breaker.force`` (admin): ``open``, ``closed``, ``disabled`` or ``reset``.

        Returns the breaker's new view (as in ``breaker_list``).
        """
        args = breaker_force_args(name, state)
        result: dict[str, Any] = self.request("breaker.force", args, timeout=timeout)
        return result


def _remaining(deadline: float) -> float | None:
    """Seconds left before ``deadline`` for ``settimeout`` (``None``: no deadline)."""
    if math.isinf(deadline):
        return None
    # A zero timeout would make the socket non-blocking; a tiny one still times out at once.
    return max(deadline - time.monotonic(), 1e-6)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
