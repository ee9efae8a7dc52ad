"""The server against hostile peers, in process over real sockets: per-uid cap, frame deadline,
unread replies bounded in bytes and cut off, shared answers, turns between connections,
half-close, the drain's shutting_down, ignored notifications, fair shares of a busy loop
(issue 12)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.lowlevel
import trio.testing

from claykiln.daemon.rpc.listener import bind_unix_listener
from claykiln.daemon.rpc.protocol import encode_request
from claykiln.daemon.rpc.server import Method, RequestContext, Server, ServerLimits

IO_TIMEOUT = 10.0  # seconds (virtual under autojump_clock)


class Calls:
    """Test methods that count their calls; ``slow`` parks until released or cancelled."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.order: list[str] = []
        self.release = trio.Event()

    def _seen(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        self.order.append(name)

    def table(self) -> dict[str, Method]:
        def hello(ctx: RequestContext, args: Any) -> Any:
            self._seen("hello")
            return {"protocol": 1}

        def costly(ctx: RequestContext, args: Any) -> Any:
            self._seen("costly")
            end = time.perf_counter() + 0.0002  # 0.2 ms of work on the reader
            while time.perf_counter() < end:
                pass
            return {"n": self.counts["costly"]}

        def blob(ctx: RequestContext, args: Any) -> Any:
            self._seen("blob")
            return b"x" * 100_000

        async def slow(ctx: RequestContext, args: Any) -> Any:
            self._seen("slow")
            await self.release.wait()
            return {"done": True}

        methods = [
            Method("hello", inline=hello),
            Method("costly", inline=costly),
            Method("status", inline=costly, shared=True),
            Method("blob", inline=blob),
            Method("slow", handler=slow),
        ]
        return {m.name: m for m in methods}


@asynccontextmanager
async def serving(server: Server, sock_dir: Path) -> AsyncIterator[Path]:
    path = sock_dir / "kiln.sock"
    listener = bind_unix_listener(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listener)
        yield path
        nursery.cancel_scope.cancel()


class Peer:
    """A raw peer: writes frames, reads frames, can half-close."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.unpacker = msgpack.Unpacker(raw=False)
        self.frames: list[Any] = []

    @classmethod
    async def connect(cls, path: Path) -> Peer:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, *frames: bytes) -> None:
        await self.stream.send_all(b"".join(frames))

    async def read(self, count: int) -> list[Any]:
        while len(self.frames) < count:
            data = await self.stream.receive_some(65536)
            assert data, f"closed after {len(self.frames)} of {count} frames"
            self.unpacker.feed(data)
            self.frames.extend(self.unpacker)
        out, self.frames = self.frames[:count], self.frames[count:]
        return out

    async def until_closed(self) -> list[Any]:
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            self.unpacker.feed(data)
            self.frames.extend(self.unpacker)
        out, self.frames = self.frames, []
        return out


def server(calls: Calls, **limits: Any) -> Server:
    return Server(calls.table(), ServerLimits(**limits))


async def test_a_uid_past_its_cap_is_refused_and_freed_slots_come_back(sock_dir: Path) -> None:
    """The third connection of a uid capped at two is refused too_many_connections; once one
    closes, the uid may connect again."""
    calls = Calls()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server(calls, max_connections_per_uid=2), sock_dir) as path:
            first, second = await Peer.connect(path), await Peer.connect(path)
            for peer in (first, second):
                await peer.send(encode_request(1, "hello"))
                await peer.read(1)
            third = await Peer.connect(path)
            refused = await third.until_closed()
            assert refused[0][2][0]["code"] == "too_many_connections"
            assert "max_connections_per_uid = 2" in refused[0][2][0]["message"]
            await first.stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            again = await Peer.connect(path)
            await again.send(encode_request(2, "hello"))
            assert (await again.read(1))[0][3] == {"protocol": 1}


async def test_an_incomplete_frame_expires_at_frame_timeout(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Half a frame left for frame_timeout gets protocol_error frame_timeout and a close; a
    connection between frames is only subject to idle_timeout."""
    calls = Calls()
    srv = server(calls, frame_timeout=2.0)
    frame = encode_request(1, "hello")
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path:
            drip, calm = await Peer.connect(path), await Peer.connect(path)
            await drip.send(frame[:3])
            await calm.send(frame)
            assert (await calm.read(1))[0][3] == {"protocol": 1}
            start = trio.current_time()
            said = await drip.until_closed()
            assert 2.0 <= trio.current_time() - start <= 3.0
            assert said[0][2][0]["code"] == "frame_timeout"
            await calm.send(encode_request(2, "hello"))  # still open
            assert (await calm.read(1))[0][1] == 2
    assert srv.counters.cut_off == 1


async def test_unread_replies_stop_the_reading_in_bytes_then_cut_off(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A peer that never reads its 100 KB replies is not read past max_reply_backlog (far
    fewer requests run than it sent) and is cut off at reply_timeout."""
    calls = Calls()
    srv = server(calls, max_reply_backlog=256 * 1024, reply_timeout=5.0)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.connect(str(path))
            raw.setblocking(False)
            sent = 0
            frames = b"".join(encode_request(n, "blob") for n in range(100))
            async with trio.open_nursery() as nursery:

                async def push() -> None:
                    nonlocal sent
                    sock = trio.socket.from_stdlib_socket(raw)
                    try:
                        while sent < len(frames):
                            sent += await sock.send(frames[sent:])
                    except OSError:
                        pass

                nursery.start_soon(push)
                start = trio.current_time()
                while srv.counters.cut_off == 0:
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
            assert trio.current_time() - start >= 5.0
            raw.close()
    # The kernel's buffers hold a few replies; the backlog at most 256 KiB more.
    assert calls.counts["blob"] < 30
    assert srv.counters.connections == 0


async def test_a_peer_cut_off_while_unread_is_not_charged_its_stall(sock_dir: Path) -> None:
    """The time a connection waited for its peer to read (then cut off at reply_timeout) is
    not work charged to the peer's share: only its decoding and writes are (real clock: the
    shares count real seconds)."""
    calls = Calls()
    stall = 0.6
    srv = server(calls, max_reply_backlog=64 * 1024, reply_timeout=stall)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.connect(str(path))
            raw.setblocking(False)
            frames = b"".join(encode_request(n, "blob") for n in range(100))
            sock = trio.socket.from_stdlib_socket(raw)
            sent = 0
            with trio.move_on_after(IO_TIMEOUT / 2):
                while srv.counters.cut_off == 0:
                    with contextlib.suppress(OSError), trio.move_on_after(0.05):
                        if sent < len(frames):
                            sent += await sock.send(frames[sent:])
                    await trio.sleep(0.01)
            assert srv.counters.cut_off == 1
            raw.close()
            account = srv.dispatch.shares.accounts[os.getpid()]
    assert account.work < stall / 3  # its work, not the stall (which was charged before)


async def test_a_peer_refused_a_frame_or_cut_off_owes_a_penalty(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A connection closed for a fatal protocol error (undecodable msgpack) or a frame left
    unfinished past frame_timeout puts a share window's penalty on its peer's account (it
    waits while others keep the loop busy); a well-behaved connection puts none."""
    calls = Calls()
    srv = server(calls, frame_timeout=2.0)
    pid = os.getpid()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path:
            good = await Peer.connect(path)
            await good.send(encode_request(1, "hello"))
            await good.read(1)
            account = srv.dispatch.shares.accounts[pid]
            assert account.penalty == 0.0
            bad = await Peer.connect(path)
            await bad.send(b"\xc1")  # a byte msgpack never uses
            closing = await bad.until_closed()
            assert closing[-1][1] == "protocol_error"
            refused = account.penalty
            assert refused == pytest.approx(srv.dispatch.shares.window, rel=0.05)
            drip = await Peer.connect(path)
            await drip.send(encode_request(2, "hello")[:3])  # never finished
            closing = await drip.until_closed()
            assert closing[-1][1] == "protocol_error" and "frame_timeout" in str(closing[-1][2])
            assert account.penalty > refused * 0.5  # a second window, the first decaying
            await good.stream.aclose()


async def test_a_shared_answer_is_computed_once_per_interval(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """status (shared) pipelined 200 times is computed once; after shared_answer_age it is
    computed again; a shared method called with arguments computes its own answer."""
    calls = Calls()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server(calls, shared_answer_age=1.0), sock_dir) as path:
            peer = await Peer.connect(path)
            await peer.send(*(encode_request(n, "status") for n in range(200)))
            replies = await peer.read(200)
            assert [r[1] for r in replies] == list(range(200))
            assert {r[3]["n"] for r in replies} == {1}
            assert calls.counts["costly"] == 1
            await trio.sleep(1.5)
            await peer.send(encode_request(7, "status"), encode_request(8, "status", {"x": 1}))
            replies = await peer.read(2)
            assert calls.counts["costly"] == 3


async def test_a_shared_answer_is_fresh_after_any_other_request(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A request that ran since the shared answer was computed (on any connection) makes the
    next one fresh: a client that acts and then asks sees its act."""
    calls = Calls()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server(calls, shared_answer_age=60.0), sock_dir) as path:
            peer, other = await Peer.connect(path), await Peer.connect(path)
            await peer.send(encode_request(1, "status"), encode_request(2, "status"))
            await peer.read(2)
            assert calls.counts["costly"] == 1
            await other.send(encode_request(3, "hello"))
            await other.read(1)
            await peer.send(encode_request(4, "status"), encode_request(5, "status"))
            replies = await peer.read(2)
            assert calls.counts["costly"] == 2
            assert replies[0][3] == replies[1][3] == {"n": 2}


async def test_a_pipelining_peer_gives_others_their_turn(sock_dir: Path) -> None:
    """A peer pipelining 500 requests of 0.2 ms each (100 ms of work) does not keep a hello on
    another connection waiting until all of them are done."""
    calls = Calls()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server(calls), sock_dir) as path:
            hog, other = await Peer.connect(path), await Peer.connect(path)
            await hog.send(*(encode_request(n, "costly") for n in range(500)))
            while not calls.counts.get("costly"):
                await trio.lowlevel.checkpoint()
            await other.send(encode_request(1, "hello"))
            await other.read(1)
            assert calls.counts["costly"] < 500
            await hog.read(500)
    assert calls.order.index("hello") < len(calls.order) - 1


async def test_a_half_closed_peer_gets_its_replies(sock_dir: Path) -> None:
    """Requests, then shutdown(SHUT_WR): the running request still answers, then the close."""
    calls = Calls()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server(calls), sock_dir) as path:
            peer = await Peer.connect(path)
            await peer.send(encode_request(1, "slow"), encode_request(2, "hello"))
            await peer.stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            calls.release.set()
            said = await peer.until_closed()
    assert sorted(frame[1] for frame in said) == [1, 2]
    assert all(frame[2] is None for frame in said)


async def test_a_peer_that_closes_cancels_its_requests(sock_dir: Path) -> None:
    """A peer that closes its whole socket (not a half-close) still cancels what it started."""
    calls = Calls()
    srv = server(calls)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path:
            peer = await Peer.connect(path)
            await peer.send(encode_request(1, "slow"))
            while srv.counters.in_flight == 0:
                await trio.sleep(0.01)
            await peer.stream.aclose()
            while srv.counters.in_flight:
                await trio.sleep(0.01)
    assert srv.counters.connections == 0


async def test_a_second_sigterm_ends_the_grace_period_with_shutting_down(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """cut_drain_short during drain(grace=60) answers the running request shutting_down
    (started: true) at once instead of after the grace period."""
    calls = Calls()
    srv = server(calls)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path:
            peer = await Peer.connect(path)
            await peer.send(encode_request(1, "slow"))
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(srv.drain, 60.0)
                await trio.sleep(1.0)
                srv.cut_drain_short()
            said = await peer.until_closed()
            assert trio.current_time() - start < 5.0
    assert said[0][2]["code"] == "shutting_down"
    assert said[0][2]["details"] == {"started": True}


async def test_client_notifications_are_ignored(sock_dir: Path) -> None:
    """Notifications with positional, named or no params are ignored; the connection stays."""
    calls = Calls()
    srv = server(calls)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path:
            peer = await Peer.connect(path)
            await peer.send(
                msgpack.packb([2, "nvim_subscribe", ["BufEnter"]]),
                msgpack.packb([2, "note", [{"a": 1}]]),
                msgpack.packb([2, "bare", {"a": 1}]),
                msgpack.packb([2, "none", []]),
                encode_request(5, "hello"),
            )
            assert (await peer.read(1))[0][1] == 5
    assert srv.counters.protocol_errors == 0


OTHERS = 1  # a pid no test peer has (init): the busy "other peers"
OTHER_CONNECTIONS = 200  # their working connections: this process's share is 1/201 s a second


async def keep_others_busy(srv: Server, task_status: trio.TaskStatus[None]) -> None:
    """Every quarter second, 200 connections of another peer each do 1 ms of work."""
    task_status.started()
    while True:
        now = trio.current_time()
        for conn in range(OTHER_CONNECTIONS):
            srv.dispatch.shares.charge(OTHERS, 10_000 + conn, 0.001, now)
        await trio.sleep(0.25)


async def test_a_peer_over_its_share_is_held_back_and_answered_in_full(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """60 pipelined requests of 0.2 ms each (12 ms) against a share of 5 ms: the connection
    waits for its share (held_back counted, time passes) and every request is answered."""
    calls = Calls()
    srv = server(calls)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path, trio.open_nursery() as nursery:
            await nursery.start(keep_others_busy, srv)
            peer = await Peer.connect(path)
            start = trio.current_time()
            await peer.send(*(encode_request(n, "costly") for n in range(60)))
            replies = await peer.read(60)
            assert trio.current_time() - start > 0.1  # it waited: virtual seconds
            nursery.cancel_scope.cancel()
    assert [r[1] for r in replies] == list(range(60)) and all(r[2] is None for r in replies)
    assert srv.counters.held_back > 0
    assert srv.dispatch.shares.accounts[os.getpid()].work > 0


async def test_the_frame_deadline_does_not_count_the_daemons_waits(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A peer in debt sends work and half a frame, and the rest 0.8 s after its work was
    answered: the daemon's waits for its share meanwhile (about a second) are not the peer's,
    so the frame is answered, not expired at frame_timeout (1 s)."""
    calls = Calls()
    srv = server(calls, frame_timeout=1.0)
    frame = encode_request(99, "hello")
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path, trio.open_nursery() as nursery:
            await nursery.start(keep_others_busy, srv)
            peer = await Peer.connect(path)
            start = trio.current_time()
            await peer.send(*(encode_request(n, "costly") for n in range(60)), frame[:3])
            assert len(await peer.read(60)) == 60
            assert trio.current_time() - start > 0.2  # it was held back meanwhile
            await trio.sleep(0.8)
            await peer.send(frame[3:])
            replies = await peer.read(1)
            nursery.cancel_scope.cancel()
    assert replies[0][1] == 99 and replies[0][3] == {"protocol": 1}
    assert srv.counters.held_back > 0 and srv.counters.cut_off == 0


async def test_shares_off_never_hold_back(sock_dir: Path, autojump_clock: trio.abc.Clock) -> None:
    """``share_window = 0``: the same work beside the same busy peer is never held back."""
    calls = Calls()
    srv = server(calls, share_window=0.0)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(srv, sock_dir) as path, trio.open_nursery() as nursery:
            await nursery.start(keep_others_busy, srv)
            peer = await Peer.connect(path)
            await peer.send(*(encode_request(n, "costly") for n in range(60)))
            assert len(await peer.read(60)) == 60
            nursery.cancel_scope.cancel()
    assert srv.counters.held_back == 0
