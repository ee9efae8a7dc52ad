"""A small trio msgpack-rpc server on a real Unix socket, for the client library's tests.

``FixtureServer`` speaks the protocol through ``claykiln.daemon.rpc.protocol`` and answers a
handful of test methods:

- ``echo`` -> its args; ``hello`` -> ``server.hello`` (``HELLO`` unless a test sets it);
  ``status`` / ``breaker.*`` / ``call`` -> ``{method, args}`` (a ``call`` whose ``json`` is
  ``{"hold": tag}`` answers only once the test calls ``release(tag)``)
- ``slow`` ``{delay, value}`` -> ``value`` after ``delay`` seconds (trio time)
- ``held`` ``{tag}`` -> ``tag`` once the test calls ``release(tag)`` (deterministic reordering)
- ``fail`` ``{code, message, ...}`` -> that error map
- ``drop`` closes the connection without a reply; ``violate`` sends a ``protocol_error``
  notification and closes; ``garbage`` sends an undecodable byte.
- input that breaks the protocol (e.g. a frame over 1 MiB) gets a ``protocol_error``
  notification and the connection is closed, as the daemon does.
- every request on a connection whose number (1, 2, ... in accept order) is in ``draining``
  gets ``shutting_down`` with ``drain_details``, as a draining daemon answers.

``serve`` removes a stale socket file first, so a test can start the server late (a daemon
restarting) or again on the same path.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from claykiln.daemon.rpc.protocol import (
    FrameParser,
    Request,
    Violation,
    encode_notification,
    encode_response,
)

T = TypeVar("T")
ECHO_METHODS = frozenset({"status", "breaker.list", "breaker.force", "call"})
HELLO = {"protocol": 1, "server": "claykiln fixture", "limits": {"max_frame": 1048576}}


class FixtureServer:
    """A test server; its state is touched only from the trio thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accepted = 0
        self.received: list[Request] = []
        self.reply_order: list[Any] = []
        self._gates: dict[str, trio.Event] = {}
        self._sent: dict[str, trio.Event] = {}
        self._arrival = trio.Event()
        self._connections: set[trio.CancelScope] = set()
        self.hello: dict[str, Any] = HELLO
        self.draining: set[int] = set()
        self.drain_details: dict[str, Any] = {}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound here, not with trio's bind, which runs in a thread: autojump_clock would jump
        # while it does (a client waiting for this socket would give up).
        self.path.unlink(missing_ok=True)
        raw.bind(str(self.path))
        raw.listen(64)
        with trio.socket.from_stdlib_socket(raw) as sock:
            listener = trio.SocketListener(sock)
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    self.accepted += 1
                    nursery.start_soon(self._connection, stream, self.accepted)

    def gate(self, tag: str) -> trio.Event:
        return self._gates.setdefault(tag, trio.Event())

    def sent(self, tag: str) -> trio.Event:
        """Set once the reply carrying ``tag`` has been written to the socket."""
        return self._sent.setdefault(tag, trio.Event())

    async def release(self, tag: str) -> None:
        """Let the ``held`` call with ``tag`` answer, and wait until its reply is sent."""
        self.gate(tag).set()
        await self.sent(tag).wait()

    async def wait_received(self, count: int) -> None:
        while len(self.received) < count:
            await self._arrival.wait()

    def drop_all(self) -> None:
        for scope in self._connections:
            scope.cancel()

    async def _connection(self, stream: trio.SocketStream, number: int) -> None:
        parser = FrameParser()
        send_lock = trio.Lock()
        try:
            async with trio.open_nursery() as nursery:
                self._connections.add(nursery.cancel_scope)
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    for event in parser.feed(data):
                        if isinstance(event, Request):
                            self.received.append(event)
                            self._arrival.set()
                            self._arrival = trio.Event()
                            nursery.start_soon(
                                self._answer, stream, send_lock, event, nursery.cancel_scope, number
                            )
                        elif isinstance(event, Violation):
                            note = {"code": event.code, "message": event.message}
                            frame = encode_notification("protocol_error", note)
                            await self._send(stream, send_lock, frame)
                            nursery.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(
        self,
        stream: trio.SocketStream,
        lock: trio.Lock,
        req: Request,
        conn: trio.CancelScope,
        number: int,
    ) -> None:
        args, error, result, tag = req.args, None, None, None
        held = args.get("json") if req.method == "call" else None
        if number in self.draining:
            error = {"code": "shutting_down", "message": "draining"}
            if self.drain_details:
                error["details"] = self.drain_details
        elif req.method == "echo":
            result = args
        elif req.method == "hello":
            result = self.hello
        elif isinstance(held, dict) and "hold" in held:
            tag = held["hold"]
            await self.gate(tag).wait()
            result = {"method": req.method, "args": args}
        elif req.method in ECHO_METHODS:
            result = {"method": req.method, "args": args}
        elif req.method == "slow":
            await trio.sleep(args["delay"])
            result = tag = args["value"]
        elif req.method == "held":
            tag = args["tag"]
            await self.gate(tag).wait()
            result = tag
        elif req.method == "fail":
            error = args
        elif req.method == "drop":
            conn.cancel()
            return
        elif req.method == "violate":
            note = {"code": args["code"], "message": args["message"]}
            await self._send(stream, lock, encode_notification("protocol_error", note))
            conn.cancel()
            return
        elif req.method == "garbage":
            await self._send(stream, lock, b"\xc1")
            return
        else:
            error = {"code": "unknown_method", "message": f"no method {req.method!r}"}
        if not await self._send(stream, lock, encode_response(req.msgid, error, result)):
            return
        self.reply_order.append(result)
        if tag is not None:
            self.sent(str(tag)).set()

    @staticmethod
    async def _send(stream: trio.SocketStream, lock: trio.Lock, data: bytes) -> bool:
        """Write ``data``; False when the client already went away."""
        try:
            async with lock:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


async def in_thread(fn: Callable[[], T]) -> T:
    """Run blocking client code in a worker thread (abandoned if the test times out)."""
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def run_asyncio(make: Callable[[], Any]) -> Callable[[], Any]:
    """A thread body that runs the coroutine ``make()`` in a fresh asyncio loop."""
    return lambda: asyncio.run(make())
