"""Subscriptions: the daemon's pushed notifications (docs/protocol.md, "Subscribe"), as an
iterator in each flavor::

    with Client() as kiln, kiln.subscribe(["tick", "breaker"]) as sub:
        print(sub.info["tick"])                 # the latest tick, in the subscribe reply
        for note in sub:                        # note.method: "tick" | "event", note.args: map
            ...

    async with TrioClient() as kiln, kiln.subscribe(["alert"]) as sub:
        async for note in sub:
            ...

Contract: a subscription has a connection of its own (the client's calls never wait behind
notifications, and a subscriber that stops reading only loses its own ticks). Opening it
connects (waiting up to ``connect_timeout`` for a restarting daemon), sends ``subscribe`` and
waits up to ``timeout`` for the reply (``info``); a refusal raises its ``KilnError``.
``receive(timeout=None)`` returns the next notification (``KilnTimeout`` when none came in
``timeout`` seconds); iteration yields them until the daemon closes the connection, which
raises ``ConnectionLost`` (a restart: open a new subscription). Each notification's args carry
``dropped``, how many this subscription has lost so far. ``close`` ends it (idempotent).
"""

# The API takes `timeout=` per call, as the rest of the client does.
# ruff: noqa: ASYNC109

from __future__ import annotations

import collections
import math
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from claykiln.daemon.client._errors import (
    ConnectionLost,
    DaemonUnavailable,
    KilnError,
    KilnTimeout,
    ProtocolViolation,
    error_from_wire,
)
from claykiln.daemon.rpc.protocol import (
    FrameParser,
    Limits,
    Notification,
    Response,
    Violation,
    encode_request,
)

if TYPE_CHECKING:
    import asyncio

    import trio

__all__ = [
    "AsyncioSubscription",
    "Notification",
    "Subscription",
    "TrioSubscription",
    "subscribe_args",
    "subscription_for",
]


RECV_SIZE: Final = 65536
# The daemon is trusted more than a client is: as the other flavors read it (``_core.py``).
LIMITS: Final = Limits(max_frame=64 * 1024 * 1024, max_array_len=1_000_000, max_map_len=1_000_000)
CONNECT_RETRY: Final = 0.05  # seconds between connects while the daemon (re)starts
SUBSCRIBE_MSGID: Final = 1


def _timeout(what: str, seconds: float) -> KilnTimeout:
    msg = f"no {what} within {seconds:g}s (client-side timeout)"
    return KilnTimeout(msg, details={"stage": "client", "timeout": seconds})


class _Connect:
    """Attempts to connect within ``connect_timeout`` (a daemon restarting: no socket file yet,
    or nobody accepting on it): ``wait`` after each failure, then ``DaemonUnavailable``."""

    def __init__(self, path: Path, connect_timeout: float, now: float) -> None:
        self.path = path
        self.deadline = now + connect_timeout

    def left(self, now: float) -> float:
        return max(self.deadline - now, 1e-3)

    def wait(self, exc: OSError, now: float) -> float:
        if now >= self.deadline:
            reason = exc.strerror or type(exc).__name__
            raise DaemonUnavailable.at(self.path, reason) from None
        return min(CONNECT_RETRY, self.deadline - now)


def subscribe_args(topics: Sequence[str] | None, buffer: int | None) -> dict[str, Any]:
    """``subscribe``'s named arguments: only those given (the daemon's defaults otherwise)."""
    args: dict[str, Any] = {}
    if topics is not None:
        if isinstance(topics, str):
            msg = "topics must be a list of topic names, e.g. ['tick', 'breaker']"
            raise TypeError(msg)
        args["topics"] = list(topics)
    if buffer is not None:
        args["buffer"] = buffer
    return args


class _Stream:
    """Sans-I/O: the subscribe request, its reply, then the notifications in order."""

    def __init__(self, args: dict[str, Any], path: Path) -> None:
        self.path = path
        self.parser = FrameParser(LIMITS)
        self.frame = encode_request(SUBSCRIBE_MSGID, "subscribe", args)
        self.reply: Response | None = None
        self.failure: KilnError | None = None
        self.notes: collections.deque[Notification] = collections.deque()

    @property
    def answered(self) -> bool:
        return self.reply is not None or self.failure is not None

    def feed(self, data: bytes) -> None:
        """Bytes from the socket (b"" at EOF)."""
        if self.failure is not None:
            return
        if not data:
            msg = f"the daemon at {self.path} closed the subscription's connection"
            self.failure = ConnectionLost(msg)
            return
        for event in self.parser.feed(data):
            if isinstance(event, Response) and event.msgid == SUBSCRIBE_MSGID:
                self.reply = event
            elif isinstance(event, Notification) and event.method == "protocol_error":
                text = event.args.get("message", "protocol violation")
                code = str(event.args.get("code") or "bad_request")
                self.failure = ProtocolViolation(f"the daemon closes: {text}", code=code)
            elif isinstance(event, Notification):
                self.notes.append(event)
            elif isinstance(event, Violation):
                msg = f"the daemon sent a frame this client cannot read: {event.message}"
                self.failure = ProtocolViolation(msg, code=event.code)

    def next_note(self) -> Notification | None:
        """The next notification; raises the connection's failure once none is left."""
        if self.notes:
            return self.notes.popleft()
        if self.failure is not None:
            raise self.failure
        return None

    def info(self) -> dict[str, Any]:
        """The subscribe reply (raises its error, or the connection's failure)."""
        if self.reply is None:
            assert self.failure is not None
            raise self.failure
        if self.reply.error is not None:
            raise error_from_wire(self.reply.error)
        result: dict[str, Any] = self.reply.result
        return result


class Subscription:
    """A blocking subscription (see the module docstring)."""

    def __init__(
        self,
        socket_path: Path,
        args: dict[str, Any],
        *,
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.info: dict[str, Any] = {}
        self._stream = _Stream(args, socket_path)
        self._sock: socket.socket | None = None

    def open(self) -> Subscription:
        attempts = _Connect(self.socket_path, self.connect_timeout, time.monotonic())
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(attempts.left(time.monotonic()))
                sock.connect(str(self.socket_path))
                break
            except OSError as exc:
                sock.close()
                time.sleep(attempts.wait(exc, time.monotonic()))
        self._sock = sock
        deadline = time.monotonic() + self.timeout
        sock.settimeout(self.timeout)
        sock.sendall(self._stream.frame)
        what = "reply to subscribe"
        while not self._stream.answered:
            self._read(deadline, what, self.timeout)
        self.info = self._stream.info()
        return self

    def _read(self, deadline: float, what: str, timeout: float | None) -> None:
        """Feed the next chunk (waiting until ``deadline``: ``KilnTimeout`` naming ``what``
        and ``timeout`` after it)."""
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timeout(what, timeout or 0.0)
        self._sock.settimeout(None if math.isinf(left) else left)
        try:
            data = self._sock.recv(RECV_SIZE)
        except TimeoutError:
            raise _timeout(what, timeout or 0.0) from None
        except OSError:
            data = b""
        self._stream.feed(data)

    def receive(self, timeout: float | None = None) -> Notification:
        """The next notification (``KilnTimeout`` after ``timeout`` seconds without one)."""
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while True:
            note = self._stream.next_note()
            if note is not None:
                return note
            self._read(deadline, "notification", timeout)

    def __iter__(self) -> Iterator[Notification]:
        while True:
            yield self.receive()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Subscription:
        return self.open() if self._sock is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TrioSubscription:
    """A trio subscription (see the module docstring); ``async with`` opens it."""

    def __init__(
        self, socket_path: Path, args: dict[str, Any], *, timeout: float, connect_timeout: float
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.info: dict[str, Any] = {}
        self._stream = _Stream(args, socket_path)
        self._sock: trio.SocketStream | None = None

    async def open(self) -> TrioSubscription:
        import trio

        attempts = _Connect(self.socket_path, self.connect_timeout, trio.current_time())
        while True:
            try:
                with trio.fail_after(attempts.left(trio.current_time())):
                    self._sock = await trio.open_unix_socket(str(self.socket_path))
                break
            except trio.TooSlowError:
                await trio.sleep(attempts.wait(TimeoutError(), trio.current_time()))
            except OSError as exc:
                await trio.sleep(attempts.wait(exc, trio.current_time()))
        await self._sock.send_all(self._stream.frame)
        with trio.move_on_after(self.timeout):
            while not self._stream.answered:
                await self._read()
        if not self._stream.answered:
            raise _timeout("reply to subscribe", self.timeout)
        self.info = self._stream.info()
        return self

    async def _read(self) -> None:
        import trio

        assert self._sock is not None
        try:
            data = await self._sock.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self._stream.feed(data)

    async def receive(self, timeout: float | None = None) -> Notification:
        """The next notification (``KilnTimeout`` after ``timeout`` seconds without one)."""
        import trio

        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                note = self._stream.next_note()
                if note is not None:
                    return note
                await self._read()
        raise _timeout("notification", timeout or 0.0)

    async def __aiter__(self) -> AsyncIterator[Notification]:
        while True:
            yield await self.receive()

    async def aclose(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            await sock.aclose()

    async def __aenter__(self) -> TrioSubscription:
        return await self.open() if self._sock is None else self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncioSubscription:
    """An asyncio subscription (see the module docstring); ``async with`` opens it."""

    def __init__(
        self, socket_path: Path, args: dict[str, Any], *, timeout: float, connect_timeout: float
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.info: dict[str, Any] = {}
        self._stream = _Stream(args, socket_path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> AsyncioSubscription:
        import asyncio

        loop = asyncio.get_running_loop()
        attempts = _Connect(self.socket_path, self.connect_timeout, loop.time())
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(str(self.socket_path)),
                    attempts.left(loop.time()),
                )
                break
            except OSError as exc:  # asyncio.TimeoutError is TimeoutError, an OSError
                await asyncio.sleep(attempts.wait(exc, loop.time()))
        self._reader, self._writer = reader, writer
        writer.write(self._stream.frame)
        await writer.drain()
        try:
            async with asyncio.timeout(self.timeout):
                while not self._stream.answered:
                    await self._read()
        except TimeoutError:
            raise _timeout("reply to subscribe", self.timeout) from None
        self.info = self._stream.info()
        return self

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            data = await self._reader.read(RECV_SIZE)
        except OSError:
            data = b""
        self._stream.feed(data)

    async def receive(self, timeout: float | None = None) -> Notification:
        """The next notification (``KilnTimeout`` after ``timeout`` seconds without one)."""
        import asyncio

        try:
            async with asyncio.timeout(timeout):
                while True:
                    note = self._stream.next_note()
                    if note is not None:
                        return note
                    await self._read()
        except TimeoutError:
            raise _timeout("notification", timeout or 0.0) from None

    async def __aiter__(self) -> AsyncIterator[Notification]:
        while True:
            yield await self.receive()

    async def aclose(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    async def __aenter__(self) -> AsyncioSubscription:
        return await self.open() if self._writer is None else self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def subscription_for(
    client: Any, topics: Sequence[str] | None, buffer: int | None
) -> Subscription | TrioSubscription | AsyncioSubscription:
    """A subscription of ``client``'s flavor on its socket (not opened yet)."""
    args = subscribe_args(topics, buffer)
    options = {"timeout": client.timeout, "connect_timeout": client.connect_timeout}
    trio_front = sys.modules.get("claykiln.daemon.client._trio")
    if trio_front is not None and isinstance(client, trio_front.TrioClient):
        return TrioSubscription(client.socket_path, args, **options)
    asyncio_front = sys.modules.get("claykiln.daemon.client._asyncio")
    if asyncio_front is not None and isinstance(client, asyncio_front.AsyncioClient):
        return AsyncioSubscription(client.socket_path, args, **options)
    return Subscription(client.socket_path, args, **options)
