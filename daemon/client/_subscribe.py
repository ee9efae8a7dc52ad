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

Here: the sync ``Subscription`` and ``subscription_for`` (the flavor's kind for a client);
``_subscribe_async.py``: the trio and asyncio ones; ``_subscribe_core.py``: the sans-I/O part.
"""

# The API takes `timeout=` per call, as the rest of the client does.

from __future__ import annotations

import math
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from claykiln.daemon.client._subscribe_core import (
    RECV_SIZE,
    Attempts,
    Notification,
    SubscriptionBase,
    subscribe_args,
    timeout_error,
)

if TYPE_CHECKING:
    from claykiln.daemon.client._subscribe_async import AsyncioSubscription, TrioSubscription

__all__ = ["Notification", "Subscription", "subscribe_args", "subscription_for"]


class Subscription(SubscriptionBase):
    """A blocking subscription (see the module docstring)."""

    _sock: socket.socket | None = None

    def open(self) -> Subscription:
        attempts = Attempts(self.socket_path, self.connect_timeout, time.monotonic())
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
            raise timeout_error(what, timeout or 0.0)
        self._sock.settimeout(None if math.isinf(left) else left)
        try:
            data = self._sock.recv(RECV_SIZE)
        except TimeoutError:
            raise timeout_error(what, timeout or 0.0) from None
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


def subscription_for(
    client: Any, topics: Sequence[str] | None, buffer: int | None
) -> Subscription | TrioSubscription | AsyncioSubscription:
    """A subscription of ``client``'s flavor on its socket (not opened yet)."""
    args = subscribe_args(topics, buffer)
    options = {"timeout": client.timeout, "connect_timeout": client.connect_timeout}
    from claykiln.daemon.client._subscribe_async import AsyncioSubscription, TrioSubscription

    trio_front = sys.modules.get("claykiln.daemon.client._trio")
    if trio_front is not None and isinstance(client, trio_front.TrioClient):
        return TrioSubscription(client.socket_path, args, **options)
    asyncio_front = sys.modules.get("claykiln.daemon.client._asyncio")
    if asyncio_front is not None and isinstance(client, asyncio_front.AsyncioClient):
        return AsyncioSubscription(client.socket_path, args, **options)
    return Subscription(client.socket_path, args, **options)
