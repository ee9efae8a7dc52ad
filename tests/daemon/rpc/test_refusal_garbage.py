"""A refused request leaves no garbage for the collector, over a real Unix socket and server.

A refusal raised through frames that refer back to it (an actor's ``Reply`` holding the error it
raised, a function raising its ``error`` argument) is a reference cycle. The daemon runs the
collector rarely (``views.GC_THRESHOLD``), and under an outage most calls end refused: that
garbage grew the heap over an hour's soak. Once answered, a refusal's traceback is dropped, so
the frames and the refusal are freed by reference counting.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import trio
from test_server import Peer, err, serving, settle

from claykiln.actors.errors import BreakerOpenRefusal, Refusal
from claykiln.actors.mailbox import Reply
from claykiln.daemon.rpc.protocol import encode_request
from claykiln.daemon.rpc.server import Method, RequestContext, Server

IO_TIMEOUT = 10.0  # seconds; a hang fails instead of stalling CI


class Marker:
    """An object each refused request's frames hold; counted in the collector's garbage."""


async def _asked(reply: Reply[Any]) -> Any:
    marker = Marker()  # noqa: F841 - a local of a frame the traceback keeps
    return await reply.wait()


async def _raise_argument(error: Refusal) -> None:
    marker = Marker()  # noqa: F841
    raise error


async def refused_by_an_actor(ctx: RequestContext, args: Any) -> Any:
    """What the call path does when the breaker actor refuses: the Reply holds the refusal,
    the frames that waited on it hold the Reply."""
    reply: Reply[Any] = Reply()
    reply.fail(BreakerOpenRefusal("breaker open", retry_after=1.0))
    return await _asked(reply)


async def refused_by_argument(ctx: RequestContext, args: Any) -> Any:
    await _raise_argument(BreakerOpenRefusal("breaker open", retry_after=1.0))


def precheck_refused(ctx: RequestContext, args: Any) -> Any:
    def fail(error: Refusal) -> None:
        marker = Marker()  # noqa: F841
        raise error

    fail(BreakerOpenRefusal("breaker open", retry_after=1.0))


def table() -> dict[str, Method]:
    return {
        "actor": Method("actor", handler=refused_by_an_actor),
        "argument": Method("argument", handler=refused_by_argument),
        "precheck": Method("precheck", handler=refused_by_an_actor, precheck=precheck_refused),
    }


def garbage_markers() -> int:
    """How many Markers the collector would find only in cycles (collected and saved)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sum(isinstance(obj, Marker) for obj in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_refused_requests_leave_no_cycles(sock_dir: Path) -> None:
    """Refused by an actor's reply, by a raised argument, on the reader: 10 of each, and not
    one of their frames is left for the collector."""
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(table()), sock_dir) as running:
            peer = await Peer.connect(running.path)
            gc.collect()
            gc.disable()
            try:
                for method in ("actor", "argument", "precheck"):
                    for n in range(10):
                        await peer.send(encode_request(n, method, {}))
                        assert err(await peer.receive())["code"] == "breaker_open"
                await settle()
                alive = sum(isinstance(obj, Marker) for obj in gc.get_objects())
                leaked = garbage_markers()
            finally:
                gc.enable()
            await peer.aclose()
    assert (alive, leaked) == (0, 0)
