"""Hostile local clients against a real daemon (issue 12): none of them stalls, starves or
crashes it, and what they send is never echoed back in bulk.

Each test pins one item of the issue and failed on the daemon before the fix (status
recomputed per request, no byte bound or cut-off for unread replies, no frame deadline, decoding
unbounded in work, input echoed whole, client notifications with positional params refused).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import trio
from kiln_harness import API_KEY, KilnProcess, clay_config
from raw_peer import RawPeer, request

from claykiln.daemon import TrioClient
from claykiln.daemon.simulator import RunningSimulator, open_simulator

Factory = Callable[..., KilnProcess]


def _config(simulator: RunningSimulator, limits: str = "") -> str:
    return clay_config(simulator.url, extra=f"\n[daemon.limits]\n{limits}\n")


async def _started(kiln: Factory, simulator: RunningSimulator, limits: str = "") -> KilnProcess:
    proc = kiln(_config(simulator, limits))
    await proc.start()
    return proc


async def _status(proc: KilnProcess) -> dict[str, Any]:
    async with TrioClient(str(proc.socket)) as client:
        return await client.status()


async def _wait_for(proc: KilnProcess, event: str, count: int = 1) -> list[dict[str, Any]]:
    """The daemon's log events named ``event``, once there are ``count`` of them."""
    while len(found := proc.events(event)) < count:
        await trio.sleep(0.05)
    return found


async def test_a_status_flood_shares_one_answer(kiln: Factory, simulator: RunningSimulator) -> None:
    """Four peers pipelining 128 status each get answers computed once per status_max_age, and
    a hello sent amid the flood is answered."""
    proc = await _started(kiln, simulator, 'status_max_age = "1s"')
    flood = b"".join(request(n, "status") for n in range(128))
    replies: list[Any] = []
    with trio.fail_after(30):
        peers = [await RawPeer.connect(proc.socket) for _ in range(4)]
        async with trio.open_nursery() as nursery:

            async def one(peer: RawPeer) -> None:
                await peer.send(flood)
                replies.extend(await peer.frames(128))

            for peer in peers:
                nursery.start_soon(one, peer)
            async with TrioClient(str(proc.socket)) as bystander:
                assert (await bystander.hello())["protocol"] == 1
    assert len(replies) == 512 and all(r[2] is None for r in replies)
    # Computed per request, each answer had an uptime of its own (to the millisecond).
    assert len({r[3]["uptime_s"] for r in replies}) <= 5
    frozen = {r[3]["process"]["gc"]["frozen"] for r in replies}
    assert len(frozen) == 1 and frozen.pop() > 1000  # counted once, at the freeze
    assert await proc.stop() == 0


async def test_never_reading_flooders_leave_a_fresh_hello_answered(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """32 peers that send status and never read do not starve a new connection's hello, and
    each is cut off once its replies waited reply_timeout unread."""
    proc = await _started(kiln, simulator, 'reply_timeout = "2s"')
    flood = b"".join(request(n, "status") for n in range(400))
    with trio.fail_after(60):
        peers = [await RawPeer.connect(proc.socket) for _ in range(32)]
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(peer.send, flood)  # blocks once the daemon stops reading
            with trio.fail_after(10):
                async with TrioClient(str(proc.socket)) as client:
                    assert (await client.hello())["protocol"] == 1
            cut = await _wait_for(proc, "conn.reply_timeout", 32)
        assert all(event["unsent_bytes"] > 0 and event["uid"] == 0 for event in cut)
        status = await _status(proc)
    assert status["server"]["cut_off"] >= 32
    assert status["server"]["connections"] == 1  # the status client itself
    assert await proc.stop() == 0


@pytest.fixture
async def roomy_simulator() -> AsyncIterator[RunningSimulator]:
    """A simulator that takes large routine inputs and answers polls at once."""
    async with open_simulator(
        api_key=API_KEY,
        max_body_bytes=2_000_000,
        poll_running_count=0,
        public_rate=10_000,
        public_burst=10_000,
    ) as running:
        yield running


async def test_unread_replies_are_bounded_in_bytes_then_cut_off(
    kiln: Factory, roomy_simulator: RunningSimulator
) -> None:
    """A peer that does not read its 200 KB replies is not read past max_reply_backlog (its
    next requests never run) and is cut off after reply_timeout, its replies dropped."""
    sim = roomy_simulator
    proc = await _started(kiln, sim, 'max_reply_backlog = "64KiB"\nreply_timeout = "2s"')
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            started = await client.call(
                "start_routine",
                path_params={"routine_id": "r1"},
                json={"blob": "x" * 200_000},
                idempotency_key="big-1",
            )
            run = started["body"]["run_id"]
            poll = {"operation": "poll_routine", "path_params": {"routine_id": "r1", "run_id": run}}
            before = sim.sim.stats.received["public"]
            hog = await RawPeer.connect(proc.socket)
            await hog.send(*(request(n, "call", poll) for n in range(8)))
            while sim.sim.stats.received["public"] < before + 8:
                await trio.sleep(0.01)
            while (await client.status())["server"]["in_flight"]:
                await trio.sleep(0.01)  # the eight 200 KB replies are queued, unread
            await hog.send(*(request(n, "call", poll) for n in range(8, 58)))
            cut = await _wait_for(proc, "conn.reply_timeout")
            assert cut[0]["unsent_bytes"] > 64 * 1024
            # Past the backlog bound the daemon read nothing more: the 50 later polls never ran.
            assert sim.sim.stats.received["public"] == before + 8
            assert (await client.hello())["protocol"] == 1
    assert await proc.stop() == 0


async def test_a_drip_fed_frame_is_cut_at_frame_timeout(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A peer sending one byte of a frame at a time loses its connection at frame_timeout,
    told why; a peer sending whole frames slowly keeps its connection."""
    proc = await _started(kiln, simulator, 'frame_timeout = "1s"')
    frame = request(1, "hello")
    with trio.fail_after(20):
        drip = await RawPeer.connect(proc.socket)
        slow = await RawPeer.connect(proc.socket)
        async with trio.open_nursery() as nursery:

            async def drip_feed() -> None:
                for byte in frame[:-1]:
                    await drip.send(bytes([byte]))
                    await trio.sleep(0.3)

            nursery.start_soon(drip_feed)
            said = await drip.until_closed()
            nursery.cancel_scope.cancel()
        for n in range(3):
            assert (await slow.call(n, "hello"))[3]["protocol"] == 1
            await trio.sleep(0.6)
    assert said[-1][:2] == [2, "protocol_error"]
    assert said[-1][2][0]["code"] == "frame_timeout"
    event = (await _wait_for(proc, "conn.frame_timeout"))[0]
    assert event["partial_bytes"] > 0 and event["uid"] == 0
    assert await proc.stop() == 0


def _million_empty_arrays() -> bytes:
    """A request of about a million empty arrays in 1 MiB, within every length limit."""
    rows = [[[] for _ in range(10_000)] for _ in range(104)]
    out: bytes = msgpack.packb([0, 1, "hello", [{"a": rows}]])
    assert len(out) < 1024 * 1024
    return out


async def test_a_frame_of_a_million_empty_arrays_is_refused_early(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Decoding is bounded in work: the frame is refused at max_containers (frame_too_large)
    instead of being decoded, walked and answered; other peers are served meanwhile."""
    proc = await _started(kiln, simulator)
    payload = _million_empty_arrays()
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as bystander:
            for _ in range(4):
                hostile = await RawPeer.connect(proc.socket)
                await hostile.send(payload)
                said = await hostile.until_closed()
                assert said[-1][:2] == [2, "protocol_error"], said
                assert said[-1][2][0]["code"] == "frame_too_large"
                assert "25000 arrays and maps" in said[-1][2][0]["message"]
                assert (await bystander.hello())["protocol"] == 1
    assert await proc.stop() == 0


BIG = "A" * 1_000_000  # a megabyte of input in one frame item


@pytest.mark.parametrize(
    ("name", "frame", "closes"),
    [
        ("method name", msgpack.packb([0, 1, BIG, [{}]]), False),
        ("argument name", msgpack.packb([0, 1, "hello", [{BIG: 1}]]), False),
        ("operation", msgpack.packb([0, 1, "call", [{"operation": BIG}]]), False),
        ("frame type", msgpack.packb([BIG, 1, "hello", [{}]]), True),
        ("bytes as a frame type", msgpack.packb([b"\x00" * 1_000_000, 1, "hello", [{}]]), True),
        ("method of a notification", msgpack.packb([2, BIG, 5]), True),
    ],
)
async def test_input_is_echoed_only_as_an_excerpt(
    kiln: Factory, simulator: RunningSimulator, name: str, frame: bytes, closes: bool
) -> None:
    """A megabyte in a frame item becomes at most a short excerpt in the reply and the log."""
    proc = await _started(kiln, simulator)
    log_before = proc.log_path.stat().st_size
    with trio.fail_after(20):
        peer = await RawPeer.connect(proc.socket)
        await peer.send(frame, request(2, "hello"))
        said = await peer.until_closed() if closes else await peer.frames(2)
        await peer.aclose()
    assert said, name
    assert len(msgpack.packb(said)) < 4096, name
    assert proc.log_path.stat().st_size - log_before < 16 * 1024, name
    assert await proc.stop() == 0


async def test_client_notifications_are_ignored(kiln: Factory, simulator: RunningSimulator) -> None:
    """A notification with positional params (what pynvim sends first) or named ones is
    ignored: the requests around it are answered and the connection stays open."""
    proc = await _started(kiln, simulator)
    with trio.fail_after(20):
        peer = await RawPeer.connect(proc.socket)
        await peer.send(
            msgpack.packb([2, "nvim_subscribe", ["BufEnter"]]),
            msgpack.packb([2, "progress", [{"done": 3}]]),
            msgpack.packb([2, "empty", []]),
        )
        assert (await peer.call(7, "hello"))[3]["protocol"] == 1
        await peer.send(msgpack.packb([2, "nvim_set_client_info", ["x", {}, "remote", {}, {}]]))
        assert (await peer.call(8, "hello"))[3]["protocol"] == 1
        status = await _status(proc)
    assert status["server"]["protocol_errors"] == 0
    assert await proc.stop() == 0


async def test_pynvim_session_talks_to_the_daemon(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """An unmodified msgpack-rpc client (pynvim's socket session) calls hello."""
    pynvim = pytest.importorskip("pynvim")
    proc = await _started(kiln, simulator)

    def talk() -> Any:
        # socket_session() first sends the notification nvim_set_client_info with positional
        # params (the frame the daemon used to answer with protocol_error and a close).
        session = pynvim.socket_session(str(proc.socket))
        try:
            return session.request("hello", {})
        finally:
            session.close()

    with trio.fail_after(20):
        reply = await trio.to_thread.run_sync(talk)
    assert reply["protocol"] == 1
    assert await proc.stop() == 0
