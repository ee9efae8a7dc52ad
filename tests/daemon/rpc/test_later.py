"""Requests a precheck hands back as a ``Later``: answered from outside any task, counted in
flight meanwhile, over a real Unix socket and server."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import trio
from test_server import Peer, err, ok, serving, settle

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon.rpc.protocol import encode_request
from claykiln.daemon.rpc.server import Method, RequestContext, Server
from claykiln.daemon.rpc.types import Later
from claykiln.storage import StoreFull

IO_TIMEOUT = 10.0  # seconds; a hang fails instead of stalling CI


class Parked:
    """A precheck that parks every request in a ``Later`` the test settles by hand."""

    def __init__(self) -> None:
        self.waiting: dict[Any, Later] = {}

    def precheck(self, ctx: RequestContext, args: Any) -> Later:
        later = Later()
        self.waiting[args["n"]] = later
        if args.get("now"):
            later.answer({"now": True})  # settled before the connection binds it
        return later

    async def never(self, ctx: RequestContext, args: Any) -> Any:
        raise AssertionError("a Later request must not run a task")


def table(parked: Parked) -> dict[str, Method]:
    return {"park": Method("park", handler=parked.never, precheck=parked.precheck)}


async def test_a_later_answers_out_of_order_without_a_task(sock_dir: Path) -> None:
    """Each Later's answer is its request's reply, in the order they are settled; an answer
    given before the connection bound it is sent too."""
    parked = Parked()
    server = Server(table(parked))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(
                encode_request(1, "park", {"n": 1}),
                encode_request(2, "park", {"n": 2}),
                encode_request(3, "park", {"n": 3, "now": True}),
            )
            assert ok(await peer.receive()) == {"now": True}
            await settle()
            assert server.counters.in_flight == 2
            parked.waiting[2].answer({"n": 2})
            parked.waiting[2].answer({"n": "ignored"})  # settled once
            assert (await peer.receive())[1:] == [2, None, {"n": 2}]
            parked.waiting[1].answer({"n": 1})
            assert (await peer.receive())[1:] == [1, None, {"n": 1}]
            await settle()
            assert server.counters.in_flight == 0
            await peer.aclose()


async def test_an_answered_later_leaves_no_garbage_for_the_collector(sock_dir: Path) -> None:
    """Once answered, a Later and its connection's delivery are freed by reference counting:
    a cycle per request (one per durable submit) made the collector run every half second
    under load, for 5-21 ms each time."""
    parked = Parked()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(table(parked)), sock_dir) as running:
            peer = await Peer.connect(running.path)
            gc.collect()
            gc.disable()
            try:
                for n in range(20):
                    await peer.send(encode_request(n, "park", {"n": n}))
                await settle()
                for n in range(20):
                    parked.waiting.pop(n).answer({"n": n})
                    assert ok(await peer.receive()) == {"n": n}
                gc.set_debug(gc.DEBUG_SAVEALL)
                gc.collect()
                cyclic = [obj for obj in gc.garbage if isinstance(obj, Later)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            assert cyclic == []
            await peer.aclose()


async def test_a_later_refusal_is_the_error_reply(sock_dir: Path) -> None:
    """A Refusal is answered as itself, StoreFull as storage_full, any other error internal."""
    parked = Parked()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(table(parked)), sock_dir) as running:
            peer = await Peer.connect(running.path)
            for n in (1, 2, 3):
                await peer.send(encode_request(n, "park", {"n": n}))
            await settle()
            parked.waiting[1].refuse(BadRequestRefusal("no such row"))
            assert err(await peer.receive())["code"] == "bad_request"
            parked.waiting[2].refuse(StoreFull("the map is at its ceiling"))
            assert err(await peer.receive())["code"] == "storage_full"
            parked.waiting[3].refuse(RuntimeError("a bug"))
            assert err(await peer.receive())["code"] == "internal"
            await peer.aclose()


async def test_the_drain_waits_for_a_later_then_answers_shutting_down(sock_dir: Path) -> None:
    """A Later counts as in flight for the drain; unsettled at the grace period's end, it is
    answered shutting_down with started=true, and settling it afterwards changes nothing."""
    parked = Parked()
    server = Server(table(parked))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(encode_request(1, "park", {"n": 1}))
            await settle()
            assert await server.drain(grace=0.05) is False
            error = err(await peer.receive())
            assert error["code"] == "shutting_down" and error["details"]["started"] is True
            parked.waiting[1].answer({"n": 1})
            assert await peer.until_closed() == []


async def test_a_later_settled_after_its_peer_left_is_dropped(sock_dir: Path) -> None:
    """The peer went away: the reply is dropped and the request stops counting in flight."""
    parked = Parked()
    server = Server(table(parked))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(encode_request(1, "park", {"n": 1}))
            await settle()
            await peer.aclose()
            await settle()
            assert server.counters.in_flight == 1
            parked.waiting[1].answer({"n": 1})
            assert server.counters.in_flight == 0
            assert server.counters.connections == 0


async def test_a_large_later_reply_the_kernel_takes_in_part_arrives_whole(
    sock_dir: Path,
) -> None:
    """A reply larger than the socket buffer, settled outside any task: the kernel takes part
    of it at once, the connection's writer sends the rest, the peer gets it whole and in
    order with the next one."""
    parked = Parked()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(table(parked)), sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(
                encode_request(1, "park", {"n": 1}), encode_request(2, "park", {"n": 2})
            )
            await settle()
            big = b"\xab" * (4 << 20)
            parked.waiting[1].answer({"blob": big})
            parked.waiting[2].answer({"n": 2})
            first, second = await peer.receive(), await peer.receive()
            await peer.aclose()
    assert first[1] == 1 and first[3] == {"blob": big}
    assert second[1] == 2 and second[3] == {"n": 2}
