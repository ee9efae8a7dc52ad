"""The blocking client: one plain Unix socket, one call at a time, safe to share between threads.

    with Client() as kiln:                       # socket: argument, $KILN_SOCKET, default
        reply = kiln.call("push_row", path_params={"webhook_id": "w1"}, json={"a": 1})

Contract (the same for ``TrioClient`` and ``AsyncioClient``):

- The connection opens lazily on the first call. While the socket is missing or refuses (a
  daemon restarting) the client tries again with backoff for up to ``connect_timeout``
  seconds, then raises ``DaemonUnavailable`` naming the socket path (``_resend.py``).
- A daemon error reply raises its ``KilnError`` subclass (``_errors.py``).
- No reply within the timeout raises ``KilnTimeout`` with ``details["stage"] == "client"``; the
  late reply is read and dropped by a later call. The timeout applies to each send of a call.
- A broken connection fails the call in flight; it is sent again on a new connection (at most
  ``MAX_RESENDS`` times) when that is safe: it never fully left, or repeating it is safe
  (``_resend.py``: read-only methods, an idempotency key, an operation the daemon lists as
  repeat-safe, ``retry_safe=True``). Otherwise it raises ``ConnectionLost`` (it may have run).
  A ``shutting_down`` refusal is handled the same way against the daemon's next instance. A
  connection the daemon closed while idle is noticed before sending, so that call reconnects.
- A ``protocol_error`` notification raises ``ProtocolViolation``; other notifications are passed
  to ``on_notification(method, args)`` while a call reads (never from another thread).

Threads: calls are serialized by a lock (a thread waits for the call before it), so one client
may be shared by any number of threads and each gets its own reply. ``close()`` may be called
from any thread; a call blocked in another thread then fails with ``ConnectionLost``.

Processes: after ``os.fork()`` (gunicorn's preload, multiprocessing) the child's copy of a
client forgets the parent's connection (without touching it) and opens its own on its first
call, so parent and child never read each other's replies.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import weakref
from types import TracebackType
from typing import Any

from claykiln.daemon.client._core import (
    RECV_SIZE,
    CallLedger,
    PendingCall,
    client_timeout_error,
)
from claykiln.daemon.client._errors import ConnectionLost, KilnError, ShuttingDown
from claykiln.daemon.client._methods import HELLO, ClientSurface, Rpc
from claykiln.daemon.client._resend import (
    MAX_RESENDS,
    ReconnectBackoff,
    RepeatSafe,
    Resend,
    resend_verdict,
)
from claykiln.daemon.client._result import CallResult

__all__ = ["Client"]


def _noop() -> None:
    """The wake-up of a blocking call: the caller polls ``PendingCall.done`` itself."""


class _Connection:
    """One socket and the calls in flight on it."""

    __slots__ = ("ledger", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ledger = CallLedger()


class Client(ClientSurface[Any, dict[str, Any], list[dict[str, Any]], CallResult]):
    """A blocking claykiln client (see the module docstring for the contract; the options:
    ``ClientSurface``)."""

    def _init_connections(self) -> None:
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._closing = threading.Event()  # wakes a call waiting for the daemon when closed
        _LIVE_CLIENTS.add(self)

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
        self._closing.set()
        if self._pid != os.getpid():
            self._forget_parent()
            return
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

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's connection and lock without touching them.

        Closing the child's copy of the descriptor leaves the parent's connection open (no
        shutdown(), which would cut it for the parent too).
        """
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        if self._closed:
            self._closing.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.sock.close()

    # -- one call ----------------------------------------------------------------------------

    def _dispatch(self, rpc: Rpc) -> Any:
        timeout = rpc.client_timeout(self.timeout)
        if self._pid != os.getpid():  # forked by a C library that skipped the at-fork hooks
            self._forget_parent()
        with self._lock:
            resends = 0
            while True:
                conn = self._usable_connection()
                call = self._exchange(conn, rpc, timeout)
                if resends == MAX_RESENDS or not self._may_resend(conn, rpc, call):
                    return rpc.shaped(call.outcome())
                resends += 1

    def _may_resend(self, conn: _Connection, rpc: Rpc, call: PendingCall) -> bool:
        """Whether ``rpc`` goes out again (``_resend.py``); drops a draining connection."""
        if self._closed:
            return False
        if isinstance(call.error, ShuttingDown) and self._conn is conn:
            self._drop(conn, "the daemon is shutting down")
        verdict = resend_verdict(rpc, call, conn.ledger.repeat_safe)
        if verdict is Resend.ASK:
            verdict = resend_verdict(rpc, call, self._advertised())
        return verdict is Resend.YES

    def _advertised(self) -> RepeatSafe:
        """What the daemon (back after a restart, or not) advertises as safe to repeat."""
        # A hello may always be sent again: after a kill -9 the first reconnect can land in the
        # dying daemon's listen backlog and be reset before the new instance answers.
        for _ in range(MAX_RESENDS + 1):
            try:
                conn = self._usable_connection()
                if conn.ledger.repeat_safe is None:
                    hello = self._exchange(conn, HELLO, self.timeout).outcome()
                    conn.ledger.repeat_safe = RepeatSafe.from_hello(hello)
            except ConnectionLost:
                continue
            except KilnError:  # it did not come back, or could not say
                return RepeatSafe()
            return conn.ledger.repeat_safe
        return RepeatSafe()

    def _exchange(self, conn: _Connection, rpc: Rpc, timeout: float) -> PendingCall:
        """Send ``rpc`` on ``conn`` and read until it is resolved; ``KilnTimeout`` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        call, frame = conn.ledger.start(rpc.method, rpc.args, _noop)
        self._send(conn, call, frame, deadline, timeout)
        self._await_reply(conn, call, deadline, timeout)
        return call

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
        """A connected socket; waits while the daemon restarts (``ReconnectBackoff``)."""
        backoff = ReconnectBackoff(self.socket_path, self.connect_timeout, time.monotonic())
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(backoff.attempt_timeout(time.monotonic()))
                sock.connect(str(self.socket_path))
            except OSError as exc:
                sock.close()
                if self._closing.wait(backoff.after_failure(exc, time.monotonic())):
                    msg = "this Client was closed while it waited for the daemon"
                    raise RuntimeError(msg) from None
                continue
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
            self._dispatch_notifications(conn, data)
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
        else:
            call.sent = True

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
            self._dispatch_notifications(conn, data)
            if conn.ledger.failure is not None:
                self._drop(conn, "protocol violation")

    def _dispatch_notifications(self, conn: _Connection, data: bytes) -> None:
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


# Every Client alive in this process: a forked child's copies forget the parent's connection.
_LIVE_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _forget_parents_after_fork() -> None:
    for client in list(_LIVE_CLIENTS):
        client._forget_parent()


os.register_at_fork(after_in_child=_forget_parents_after_fork)


def _remaining(deadline: float) -> float | None:
    """Seconds left before ``deadline`` for ``settimeout`` (``None``: no deadline)."""
    if math.isinf(deadline):
        return None
    # A zero timeout would make the socket non-blocking; a tiny one still times out at once.
    return max(deadline - time.monotonic(), 1e-6)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
