"""Real HTTP servers on 127.0.0.1 for the upstream tests (async context managers, no mocks).

- ``http_server()``: a tiny ASGI app under hypercorn's trio worker. Routes:
  ``/json`` 200 JSON; ``/status/{code}`` that status (``?retry_after=`` adds Retry-After);
  ``/hang`` never answers and records the client's disconnect; ``/slow?ms=N`` answers after N ms;
  ``/gate`` answers once the test sets ``record.gate`` (a request held for exactly as long as the
  test needs, whatever the machine's speed);
  ``/echo/...`` echoes method, raw path, query, headers and body as JSON;
  ``/big?bytes=N[&chunked=1]`` a body of N bytes (with or without Content-Length).
- ``raw_server()``: a TCP server that misbehaves by path: ``/close`` closes without a response,
  ``/reset`` aborts with a TCP RST, ``/garbage`` answers bytes that are not HTTP.
- ``refused_port()``: a port on 127.0.0.1 nobody listens on.
- ``unaccepting_port()``: a listener whose accept queue is full, so a connect hangs.
- ``running_pool(settings)``: an ``UpstreamPool`` with its ``run`` task started.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from claykiln.actors.upstream import UpstreamPool, UpstreamSettings

Scope = dict[str, Any]
Receive = Any
Send = Any


@attrs.define
class ServerRecord:
    """What the server saw: requests by path and client disconnects on ``/hang``."""

    base_url: str = ""
    paths: list[str] = attrs.field(factory=list)
    hanging: int = 0
    disconnects: int = 0
    disconnected: trio.Event = attrs.field(factory=trio.Event)
    held: trio.Event = attrs.field(factory=trio.Event)
    gated: int = 0  # requests to /gate that reached the app
    gate: trio.Event = attrs.field(factory=trio.Event)  # set: every /gate request answers

    async def wait_disconnects(self, count: int) -> None:
        while self.disconnects < count:
            self.disconnected = trio.Event()
            await self.disconnected.wait()

    async def wait_hanging(self, count: int) -> None:
        """Until ``count`` requests to ``/hang`` have reached the app and are being held."""
        await self._held_until(lambda: self.hanging >= count)

    async def wait_gated(self, count: int) -> None:
        """Until ``count`` requests to ``/gate`` have reached the app and wait for ``gate``."""
        await self._held_until(lambda: self.gated >= count)

    async def _held_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self.held = trio.Event()
            await self.held.wait()


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body"):
            return body


def make_app(record: ServerRecord) -> Any:
    """The ASGI app; it reports what it saw into ``record``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        record.paths.append(raw_path.decode("latin-1"))
        body = await _read_body(receive)
        plain = [(b"content-type", b"application/json")]
        if path == "/json":
            await _respond(send, 200, b'{"ok": true}', plain)
        elif path.startswith("/status/"):
            extra = (
                [(b"retry-after", query["retry_after"].encode())] if "retry_after" in query else []
            )
            await _respond(send, int(path.rsplit("/", 1)[1]), b'{"status": 1}', plain + extra)
        elif path == "/hang":
            record.hanging += 1
            record.held.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            record.disconnects += 1
            record.disconnected.set()
        elif path == "/gate":
            record.gated += 1
            record.held.set()
            await record.gate.wait()
            await _respond(send, 200, b'{"gated": true}', plain)
        elif path == "/slow":
            await trio.sleep(int(query.get("ms", "100")) / 1000)
            await _respond(send, 200, b'{"slow": true}', plain)
        elif path.startswith("/echo"):
            echo = {
                "method": scope["method"],
                "raw_path": raw_path.decode("latin-1"),
                "query": query,
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                "body": body.decode("utf-8", "replace"),
            }
            await _respond(send, 200, json.dumps(echo).encode(), plain)
        elif path == "/big":
            size = int(query["bytes"])
            chunked = query.get("chunked") == "1"
            headers = [] if chunked else [(b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            chunk = b"x" * 65536
            sent = 0
            while sent < size:
                piece = chunk[: size - sent]
                sent += len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
        else:
            await _respond(send, 404, b"{}", plain)

    return app


@asynccontextmanager
async def http_server() -> AsyncIterator[ServerRecord]:
    """Serve ``make_app`` on 127.0.0.1 (a free port) for the body of the ``async with``."""
    record = ServerRecord()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, make_app(record), config))
        record.base_url = binds[0]
        yield record
        nursery.cancel_scope.cancel()


async def _misbehave(stream: trio.SocketStream) -> None:
    data = b""
    with trio.move_on_after(5):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
    path = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b""
    if path.startswith(b"/reset"):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif path.startswith(b"/garbage"):
        await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
    await stream.aclose()


@asynccontextmanager
async def raw_server() -> AsyncIterator[str]:
    """A misbehaving TCP server on 127.0.0.1; yields its base URL."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _misbehave, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def refused_port() -> int:
    """A port that was free a moment ago (bound, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def unaccepting_port() -> Iterator[int]:
    """A listener with backlog 0 whose queue is filled: further SYNs are dropped (Linux)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@asynccontextmanager
async def running_pool(settings: UpstreamSettings) -> AsyncIterator[UpstreamPool]:
    """An UpstreamPool whose ``run`` task lives for the body of the ``async with``."""
    pool = UpstreamPool(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()
