"""The trio and asyncio subscriptions (the contract: ``_subscribe.py``); each imports its
framework only when it runs, so a sync subscriber never loads either."""

# The API takes `timeout=` per call, as the rest of the client does.
# ruff: noqa: ASYNC109

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

from claykiln.daemon.client._subscribe_core import (
    RECV_SIZE,
    Attempts,
    Notification,
    SubscriptionBase,
    timeout_error,
)

if TYPE_CHECKING:
    import asyncio

    import trio

__all__ = ["AsyncioSubscription", "TrioSubscription"]


class TrioSubscription(SubscriptionBase):
    """A trio subscription (see the module docstring); ``async with`` opens it."""

    _sock: trio.SocketStream | None = None

    async def open(self) -> TrioSubscription:
        import trio

        attempts = Attempts(self.socket_path, self.connect_timeout, trio.current_time())
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
            raise timeout_error("reply to subscribe", self.timeout)
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
        raise timeout_error("notification", timeout or 0.0)

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


class AsyncioSubscription(SubscriptionBase):
    """An asyncio subscription (see the module docstring); ``async with`` opens it."""

    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    async def open(self) -> AsyncioSubscription:
        import asyncio

        loop = asyncio.get_running_loop()
        attempts = Attempts(self.socket_path, self.connect_timeout, loop.time())
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
            raise timeout_error("reply to subscribe", self.timeout) from None
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
            raise timeout_error("notification", timeout or 0.0) from None

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
