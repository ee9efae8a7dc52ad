"""What the trio and asyncio clients share: the sends of one call, and waiting for the daemon.

``AsyncFront`` is the ``ClientSurface`` of both async flavors (each typed method returns a
coroutine). It runs one call as ``Client`` does (``_sync.py``): send, and when the connection
was lost, send again on a new one where ``_resend.py`` says that is safe. The flavor supplies
the I/O: ``_connection`` (the live connection, opened through ``_wait_for_daemon``),
``_exchange`` (one send and its reply), ``_retire`` (stop sending on a draining connection
while its calls finish), and the clock (``_now``, ``_sleep``).
"""

# The flavors take `timeout=` per call (as the sync client does): one signature in all flavors.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from claykiln.daemon.client._core import CallLedger, PendingCall
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

__all__ = ["AsyncFront"]

T = TypeVar("T")


class _Connection(Protocol):
    ledger: CallLedger


ConnT = TypeVar("ConnT", bound=_Connection)


class AsyncFront(
    ClientSurface[
        Coroutine[Any, Any, Any],
        Coroutine[Any, Any, dict[str, Any]],
        Coroutine[Any, Any, list[dict[str, Any]]],
        Coroutine[Any, Any, CallResult],
    ],
    Generic[ConnT],
):
    """The typed methods and the call loop of an async flavor whose connections are ``ConnT``."""

    _conn: ConnT | None  # the connection new calls go to (None: none yet, or it failed)

    @property
    def in_flight(self) -> int:
        """Replies the current connection still expects (abandoned calls included)."""
        conn = self._conn
        return conn.ledger.in_flight if conn is not None else 0

    async def _connection(self) -> ConnT:
        raise NotImplementedError

    async def _exchange(self, conn: ConnT, rpc: Rpc, timeout: float) -> PendingCall:
        raise NotImplementedError

    def _retire(self, conn: ConnT) -> None:
        raise NotImplementedError

    def _now(self) -> float:
        raise NotImplementedError

    async def _sleep(self, seconds: float) -> None:
        raise NotImplementedError

    async def _dispatch(self, rpc: Rpc) -> Any:
        timeout = rpc.client_timeout(self.timeout)
        resends = 0
        while True:
            conn = await self._connection()
            call = await self._exchange(conn, rpc, timeout)
            if resends == MAX_RESENDS or not await self._may_resend(conn, rpc, call):
                return rpc.shaped(call.outcome())
            resends += 1

    async def _may_resend(self, conn: ConnT, rpc: Rpc, call: PendingCall) -> bool:
        """Whether ``rpc`` goes out again (``_resend.py``); retires a draining connection."""
        if self._closed:
            return False
        if isinstance(call.error, ShuttingDown):
            self._retire(conn)
        verdict = resend_verdict(rpc, call, conn.ledger.repeat_safe)
        if verdict is Resend.ASK:
            verdict = resend_verdict(rpc, call, await self._advertised())
        return verdict is Resend.YES

    async def _advertised(self) -> RepeatSafe:
        """What the daemon (back after a restart, or not) advertises as safe to repeat."""
        # A hello may always be sent again: after a kill -9 the first reconnect can land in the
        # dying daemon's listen backlog and be reset before the new instance answers.
        for _ in range(MAX_RESENDS + 1):
            try:
                conn = await self._connection()
                if conn.ledger.repeat_safe is None:
                    hello = (await self._exchange(conn, HELLO, self.timeout)).outcome()
                    conn.ledger.repeat_safe = RepeatSafe.from_hello(hello)
            except ConnectionLost:
                continue
            except KilnError:  # it did not come back, or could not say
                return RepeatSafe()
            return conn.ledger.repeat_safe
        return RepeatSafe()

    async def _wait_for_daemon(self, connect_once: Callable[[float], Awaitable[T]]) -> T:
        """``await connect_once(seconds)`` until it succeeds, waiting while the daemon restarts.

        ``connect_once`` raises ``OSError`` (``TimeoutError`` when its time ran out); this
        raises ``DaemonUnavailable`` once ``connect_timeout`` is spent (``ReconnectBackoff``).
        """
        backoff = ReconnectBackoff(self.socket_path, self.connect_timeout, self._now())
        while True:
            try:
                return await connect_once(backoff.attempt_timeout(self._now()))
            except OSError as exc:
                await self._sleep(backoff.after_failure(exc, self._now()))
