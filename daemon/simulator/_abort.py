"""Aborting the HTTP connection under the current request (the simulator's reset faults).

ASGI has no way to drop a connection: an app that returns without answering gets a 500 from
hypercorn. So the simulator's server (``_server``) puts each accepted ``trio.SocketStream`` in
a context variable before hypercorn handles it; the app task hypercorn spawns for a request
inherits that context, and ``abort_connection`` closes that stream with ``SO_LINGER`` 0, which
makes the kernel send a TCP RST. The client sees a connection error (httpx ``ReadError`` or
``RemoteProtocolError``), never a status line.
"""

from __future__ import annotations

import contextvars
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["CURRENT_STREAM", "abort_connection"]

# How long the app waits for hypercorn to notice the closed socket before it returns anyway.
ABORT_SETTLE_SECONDS = 5.0

CURRENT_STREAM: contextvars.ContextVar[trio.SocketStream | None] = contextvars.ContextVar(
    "claykiln_simulator_stream", default=None
)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def abort_connection(receive: Receive, send: Send) -> None:
    """Drop the current request's connection without an answer (TCP RST when possible).

    Returns once hypercorn has seen the connection close, so it does not try to answer.
    Outside the simulator's own server (no stream in context) it falls back to promising a
    one-byte body and closing before sending it: the client still gets a protocol error.
    """
    stream = CURRENT_STREAM.get()
    if stream is None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]}
        )
        return
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed by the peer: nothing left to reset
    await stream.aclose()
    with trio.move_on_after(ABORT_SETTLE_SECONDS):
        while (await receive())["type"] != "http.disconnect":
            pass
