"""The Unix-socket server and listener over real sockets: limits, errors, drain, hostile peers."""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from claykiln.actors.errors import BadRequestRefusal, RateLimitedRefusal, Refusal
from claykiln.daemon.rpc.listener import PeerCred, SocketInUse, bind_unix_listener
from claykiln.daemon.rpc.protocol import Limits, encode_request
from claykiln.daemon.rpc.server import Method, RequestContext, Server, ServerLimits
from claykiln.daemon.rpc.types import Answered

IO_TIMEOUT = 10.0  # seconds (virtual under autojump_clock); a hang fails instead of stalling CI
INTERNAL_MESSAGE = "internal error; see the daemon log"


# -- test methods -----------------------------------------------------------------------------
class SlowWork:
    """An async handler that parks on a per-request Event and records what happened to it."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.releases: defaultdict[int, trio.Event] = defaultdict(trio.Event)
        self.any_cancelled = trio.Event()

    async def handler(self, ctx: RequestContext, args: Any) -> Any:
        n = int(args["n"])
        self.started.append(n)
        try:
            await self.releases[n].wait()
        except trio.Cancelled:
            self.cancelled.append(n)
            self.any_cancelled.set()
            raise
        return {"n": n, "msgid": ctx.msgid}

    def release(self, *ns: int) -> None:
        for n in ns:
            self.releases[n].set()


def echo(ctx: RequestContext, args: Any) -> Any:
    return args


def blob(ctx: RequestContext, args: Any) -> Any:
    return b"x" * int(args["n"])


def whoami(ctx: RequestContext, args: Any) -> Any:
    return {"uid": ctx.peer.uid, "pid": ctx.peer.pid, "admin": ctx.admin, "msgid": ctx.msgid}


async def refuse(ctx: RequestContext, args: Any) -> Any:
    raise RateLimitedRefusal("slow down", retry_after=2.5, details={"upstream": "clay"})


async def crash(ctx: RequestContext, args: Any) -> Any:
    raise RuntimeError("secret-token-123 leaked in a stack frame")


def crash_inline(ctx: RequestContext, args: Any) -> Any:
    raise ValueError("inline secret-token-123")


async def unpackable(ctx: RequestContext, args: Any) -> Any:
    return {"obj": object()}


async def refuse_unpackable(ctx: RequestContext, args: Any) -> Any:
    raise Refusal("odd details", details={"obj": object()})


def precheck_refuse(ctx: RequestContext, args: Any) -> Any:
    if "bad" in args:
        raise BadRequestRefusal("bad is not allowed")
    if "packed" in args:  # answered with bytes packed beforehand (a stored replay)
        return Answered({"ignored": True}, packed=msgpack.packb({"stored": args["packed"]}))
    return {"checked": True, **args}


def methods(slow: SlowWork, prechecked: list[Any] | None = None) -> dict[str, Method]:
    """The test method table: inline, async slow, admin, failing and unpackable handlers."""
    seen = prechecked if prechecked is not None else []

    async def record_prepared(ctx: RequestContext, prepared: Any) -> Any:
        seen.append(prepared)
        return prepared

    table = [
        Method("echo", inline=echo),
        Method("blob", inline=blob),
        Method("whoami", inline=whoami),
        Method("slow", handler=slow.handler),
        Method("admin.op", inline=echo, admin=True),
        Method("refuse", handler=refuse),
        Method("crash", handler=crash),
        Method("crash.inline", inline=crash_inline),
        Method("unpackable", handler=unpackable),
        Method("refuse.unpackable", handler=refuse_unpackable),
        Method("checked", handler=record_prepared, precheck=precheck_refuse),
    ]
    return {m.name: m for m in table}


# -- harness ----------------------------------------------------------------------------------
class Running:
    """A server serving on ``path``; ``stopped`` is set when ``serve`` returns by itself."""

    def __init__(self, server: Server, path: Path) -> None:
        self.server = server
        self.path = path
        self.stopped = trio.Event()


@asynccontextmanager
async def serving(server: Server, sock_dir: Path) -> AsyncIterator[Running]:
    """Bind a real listener in ``sock_dir`` and run ``server.serve`` until the block ends."""
    running = Running(server, sock_dir / "kiln.sock")
    listener = bind_unix_listener(running.path)

    async def serve(task_status: trio.TaskStatus[None]) -> None:
        await server.serve(listener, task_status=task_status)
        running.stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        yield running
        nursery.cancel_scope.cancel()


class Peer:
    """A raw msgpack-rpc client over a trio Unix socket stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.unpacker = msgpack.Unpacker(raw=False)

    @classmethod
    async def connect(cls, path: Path) -> Peer:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, *frames: bytes) -> None:
        """Write the frames with a single send_all (pipelined)."""
        await self.stream.send_all(b"".join(frames))

    async def receive(self) -> Any:
        """The next decoded frame; fails the test on EOF."""
        for frame in self.unpacker:
            return frame
        while True:
            data = await self.stream.receive_some(65536)
            assert data, "the server closed the connection while a frame was expected"
            self.unpacker.feed(data)
            for frame in self.unpacker:
                return frame

    async def call(self, msgid: int, method: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and return its response frame."""
        await self.send(encode_request(msgid, method, args))
        reply = await self.receive()
        assert reply[:2] == [1, msgid], reply
        return reply

    async def until_closed(self) -> list[Any]:
        """Every frame the server sends before it closes the connection."""
        frames = list(self.unpacker)
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:  # ECONNRESET after the server closed
                return frames
            if not data:
                return frames
            self.unpacker.feed(data)
            frames.extend(self.unpacker)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def settle() -> None:
    """Let the server act on everything already written to its sockets (in-process, exact)."""
    await trio.testing.wait_all_tasks_blocked()


def ok(reply: Any) -> Any:
    assert reply[0] == 1 and reply[2] is None, reply
    return reply[3]


def err(reply: Any) -> dict[str, Any]:
    assert reply[0] == 1 and reply[3] is None and isinstance(reply[2], dict), reply
    error: dict[str, Any] = reply[2]
    return error


def is_protocol_error(frame: Any, code: str) -> bool:
    return bool(frame[:2] == [2, "protocol_error"] and frame[2][0]["code"] == code)


# -- basics -----------------------------------------------------------------------------------
async def test_inline_and_async_methods_answer(sock_dir: Path) -> None:
    """Inline and async methods reply with [1, msgid, nil, result]; peer creds reach handlers."""
    slow = SlowWork()
    slow.release(1)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(slow)), sock_dir) as running:
            peer = await Peer.connect(running.path)
            assert ok(await peer.call(5, "echo", {"a": [1, b"x"]})) == {"a": [1, b"x"]}
            assert ok(await peer.call(6, "slow", {"n": 1})) == {"n": 1, "msgid": 6}
            me = ok(await peer.call(7, "whoami"))
            assert me == {"uid": os.getuid(), "pid": os.getpid(), "admin": True, "msgid": 7}
            unknown = err(await peer.call(8, "nope"))
            assert unknown["code"] == "unknown_method" and "echo" in unknown["message"]
            await peer.aclose()


async def test_replies_come_out_of_order(sock_dir: Path) -> None:
    """A fast request pipelined behind a slow one is answered first."""
    slow = SlowWork()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(slow)), sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(encode_request(1, "slow", {"n": 1}), encode_request(2, "echo", {}))
            assert (await peer.receive())[:2] == [1, 2]
            slow.release(1)
            assert ok(await peer.receive()) == {"n": 1, "msgid": 1}
            await peer.aclose()


async def test_precheck_refuses_before_a_task_and_feeds_the_handler(sock_dir: Path) -> None:
    """A precheck Refusal is the reply (handler never runs); otherwise its value is the input."""
    seen: list[Any] = []
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork(), seen)), sock_dir) as running:
            peer = await Peer.connect(running.path)
            refused = err(await peer.call(1, "checked", {"bad": 1}))
            assert refused == {"code": "bad_request", "message": "bad is not allowed"}
            assert seen == []
            assert ok(await peer.call(2, "checked", {"x": 1})) == {"checked": True, "x": 1}
            assert seen == [{"checked": True, "x": 1}]
            # packed bytes are the result, framed with the request's msgid; the stream goes on
            assert ok(await peer.call(3, "checked", {"packed": [1, "a"]})) == {"stored": [1, "a"]}
            assert ok(await peer.call(4, "checked", {"x": 2})) == {"checked": True, "x": 2}
            assert seen == [{"checked": True, "x": 1}, {"checked": True, "x": 2}]
            await peer.aclose()


# -- errors -----------------------------------------------------------------------------------
async def test_kiln_error_becomes_its_wire_error(sock_dir: Path) -> None:
    """A handler's Refusal is sent as {code, message, retry_after, details}."""
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork())), sock_dir) as running:
            peer = await Peer.connect(running.path)
            assert err(await peer.call(1, "refuse")) == {
                "code": "rate_limited",
                "message": "slow down",
                "retry_after": 2.5,
                "details": {"upstream": "clay"},
            }
            assert ok(await peer.call(2, "echo", {"still": "open"})) == {"still": "open"}
            await peer.aclose()


@pytest.mark.parametrize("method", ["crash", "crash.inline"])
async def test_plain_exception_is_internal_without_traceback(sock_dir: Path, method: str) -> None:
    """A crashing handler gives code internal with a fixed message; the connection stays usable."""
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork())), sock_dir) as running:
            peer = await Peer.connect(running.path)
            error = err(await peer.call(1, method))
            assert error == {"code": "internal", "message": INTERNAL_MESSAGE}
            assert "Traceback" not in error["message"] and "secret" not in error["message"]
            assert ok(await peer.call(2, "echo", {"k": 1})) == {"k": 1}
            await peer.aclose()


async def test_unpackable_result_is_an_internal_error(sock_dir: Path) -> None:
    """A result msgpack cannot encode is answered with internal; the connection goes on."""
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork())), sock_dir) as running:
            peer = await Peer.connect(running.path)
            assert err(await peer.call(1, "unpackable"))["code"] == "internal"
            assert ok(await peer.call(2, "echo", {"k": 2})) == {"k": 2}
            await peer.aclose()


async def test_unpackable_error_details_do_not_kill_the_server(sock_dir: Path) -> None:
    """A Refusal with unencodable details still gets an error reply; the server lives on."""
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork())), sock_dir) as running:
            peer = await Peer.connect(running.path)
            assert err(await peer.call(1, "refuse.unpackable"))["code"] == "internal"
            assert ok(await peer.call(2, "echo", {"k": 3})) == {"k": 3}
            await peer.aclose()


# -- access control ---------------------------------------------------------------------------
async def test_admin_method_forbidden_for_non_admin(sock_dir: Path) -> None:
    """An admin method is refused with forbidden for a non-admin; other methods still work."""
    asked: list[PeerCred] = []

    def is_admin(peer: PeerCred) -> bool:
        asked.append(peer)
        return False

    server = Server(methods(SlowWork()), is_admin=is_admin)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            refused = err(await peer.call(1, "admin.op", {"x": 1}))
            assert refused["code"] == "forbidden" and "admin" in refused["message"]
            assert ok(await peer.call(2, "echo", {"x": 1})) == {"x": 1}
            assert ok(await peer.call(3, "whoami"))["admin"] is False
            assert [p.uid for p in asked] == [os.getuid()]
            await peer.aclose()


async def test_admin_method_allowed_for_admin(sock_dir: Path) -> None:
    """An admin peer runs admin methods."""
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork())), sock_dir) as running:
            peer = await Peer.connect(running.path)
            assert ok(await peer.call(1, "admin.op", {"x": 1})) == {"x": 1}
            await peer.aclose()


async def test_disallowed_peer_gets_forbidden_and_is_closed(sock_dir: Path) -> None:
    """is_allowed False: a protocol_error forbidden notification, then the close."""
    server = Server(methods(SlowWork()), is_allowed=lambda peer: False)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            frames = await peer.until_closed()
            assert len(frames) == 1 and is_protocol_error(frames[0], "forbidden"), frames
            assert str(os.getuid()) in frames[0][2][0]["message"]
            assert server.connections == 0


# -- connection limits ------------------------------------------------------------------------
async def test_max_connections_refuses_the_next_one(sock_dir: Path) -> None:
    """Past max_connections the newcomer gets too_many_connections and is closed; others work."""
    server = Server(methods(SlowWork()), ServerLimits(max_connections=2))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            first = await Peer.connect(running.path)
            second = await Peer.connect(running.path)
            assert ok(await first.call(1, "echo", {"c": 1})) == {"c": 1}
            assert ok(await second.call(1, "echo", {"c": 2})) == {"c": 2}
            third = await Peer.connect(running.path)
            frames = await third.until_closed()
            assert len(frames) == 1 and is_protocol_error(frames[0], "too_many_connections")
            assert ok(await first.call(2, "echo", {"c": 1})) == {"c": 1}
            assert ok(await second.call(2, "echo", {"c": 2})) == {"c": 2}
            # A freed slot is usable again.
            await first.aclose()
            await settle()
            assert server.connections == 1
            fourth = await Peer.connect(running.path)
            assert ok(await fourth.call(1, "echo", {"c": 4})) == {"c": 4}
            await second.aclose()
            await fourth.aclose()


async def test_in_flight_limit_stops_reading(sock_dir: Path) -> None:
    """At max_in_flight the server stops reading: queued requests wait, then all are answered."""
    slow = SlowWork()
    server = Server(methods(slow), ServerLimits(max_in_flight=4))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            for n in range(4):
                await peer.send(encode_request(n, "slow", {"n": n}))
                await settle()
            assert sorted(slow.started) == [0, 1, 2, 3]
            await peer.send(*(encode_request(n, "slow", {"n": n}) for n in range(4, 10)))
            await settle()
            assert sorted(slow.started) == [0, 1, 2, 3], "the reader must not take more work"
            slow.release(*range(10))
            replies = [await peer.receive() for _ in range(10)]
            assert sorted(ok(r)["n"] for r in replies) == list(range(10))
            await peer.aclose()


async def test_in_flight_limit_holds_for_a_pipelined_batch(sock_dir: Path) -> None:
    """10 slow requests in one write with max_in_flight=4: 4 start, one more per finish."""
    slow = SlowWork()
    server = Server(methods(slow), ServerLimits(max_in_flight=4))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(*(encode_request(n, "slow", {"n": n}) for n in range(10)))
            await settle()
            assert len(slow.started) == 4
            first = slow.started[0]
            slow.release(first)
            assert ok(await peer.receive())["n"] == first
            await settle()
            assert len(slow.started) == 5, "one finished, so exactly one more may start"
            slow.release(*range(10))
            replies = [await peer.receive() for _ in range(9)]
            assert sorted(ok(r)["n"] for r in replies) == sorted(set(range(10)) - {first})
            await peer.aclose()


async def test_large_pipelined_batch_of_inline_requests_is_fully_answered(sock_dir: Path) -> None:
    """300 pipelined inline requests in one write get 300 replies (outbox is max_in_flight+16)."""
    server = Server(methods(SlowWork()), ServerLimits(max_in_flight=4))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(*(encode_request(n, "echo", {"n": n}) for n in range(300)))
            replies = [await peer.receive() for _ in range(300)]
            assert [ok(r)["n"] for r in replies] == list(range(300))
            await peer.aclose()


async def test_replies_larger_than_the_socket_buffer_arrive_whole(sock_dir: Path) -> None:
    """Eight 700 KB echoes pipelined (5.6 MB of replies, far more than a socket buffer holds):
    the server's direct writes stop on a full buffer, wait for room and resume; every byte of
    every reply arrives in order while the peer is still sending."""
    payloads = [bytes([n]) * 700_000 for n in range(8)]
    replies: list[Any] = []
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork())), sock_dir) as running:
            peer = await Peer.connect(running.path)

            async def collect() -> None:
                for _ in payloads:
                    replies.append(await peer.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                for n, blob in enumerate(payloads):
                    await peer.send(encode_request(n, "echo", {"blob": blob}))
            bystander = await Peer.connect(running.path)
            assert ok(await bystander.call(99, "echo", {"still": "here"})) == {"still": "here"}
            await peer.aclose()
            await bystander.aclose()
    assert [r[1] for r in replies] == list(range(8))
    assert [ok(r)["blob"] for r in replies] == payloads


async def test_peer_reset_during_a_large_reply_leaves_the_server_serving(sock_dir: Path) -> None:
    """A peer that asks for 2 MB of replies and resets the connection without reading them costs
    the server that connection only: its blocked write fails, the connection closes, and a new
    peer is served."""
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork())), sock_dir) as running:
            greedy = await Peer.connect(running.path)
            await greedy.send(*(encode_request(n, "blob", {"n": 500_000}) for n in range(4)))
            await settle()  # the server has written what fits and waits for room
            assert running.server.connections == 1
            greedy.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            await greedy.aclose()
            while running.server.connections:
                await trio.sleep(0.01)
            peer = await Peer.connect(running.path)
            assert ok(await peer.call(1, "echo", {"a": 1})) == {"a": 1}
            await peer.aclose()


async def test_idle_connection_is_closed(sock_dir: Path, autojump_clock: trio.abc.Clock) -> None:
    """A connection with nothing in flight and nothing received for idle_timeout is closed."""
    server = Server(methods(SlowWork()), ServerLimits(idle_timeout=30.0))
    with trio.fail_after(IO_TIMEOUT * 10):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            assert ok(await peer.call(1, "echo", {})) == {}
            start = trio.current_time()
            assert await peer.until_closed() == []
            assert trio.current_time() - start >= 30.0
            assert server.connections == 0


async def test_idle_timeout_spares_a_connection_with_work_in_flight(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A slow request outliving idle_timeout keeps its connection; its reply is delivered."""
    slow = SlowWork()
    server = Server(methods(slow), ServerLimits(idle_timeout=30.0))
    with trio.fail_after(IO_TIMEOUT * 20):  # virtual time: idle is measured from the reply
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(encode_request(1, "slow", {"n": 1}))
            await trio.sleep(75)  # 2.5 idle periods of virtual time
            assert server.connections == 1 and slow.cancelled == []
            slow.release(1)
            assert ok(await peer.receive()) == {"n": 1, "msgid": 1}
            assert await peer.until_closed() == []


# -- disconnects ------------------------------------------------------------------------------
async def test_peer_disconnect_cancels_its_in_flight_handlers(sock_dir: Path) -> None:
    """When the peer goes away, its slow handlers see Cancelled; the server stays up."""
    slow = SlowWork()
    server = Server(methods(slow))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(*(encode_request(n, "slow", {"n": n}) for n in range(3)))
            await settle()
            assert sorted(slow.started) == [0, 1, 2]
            await peer.aclose()
            await slow.any_cancelled.wait()
            await settle()
            assert sorted(slow.cancelled) == [0, 1, 2]
            assert server.in_flight == 0 and server.connections == 0
            other = await Peer.connect(running.path)
            assert ok(await other.call(1, "echo", {})) == {}
            await other.aclose()


async def test_peer_disconnect_at_the_in_flight_limit_cancels_handlers(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A peer that fills max_in_flight and then disconnects has its handlers cancelled."""
    slow = SlowWork()
    server = Server(methods(slow), ServerLimits(max_in_flight=2))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(*(encode_request(n, "slow", {"n": n}) for n in range(2)))
            await settle()
            assert sorted(slow.started) == [0, 1]
            await peer.aclose()
            await slow.any_cancelled.wait()


# -- hostile input ----------------------------------------------------------------------------
async def test_undecodable_bytes_get_protocol_error_and_close(sock_dir: Path) -> None:
    """Garbage gets a protocol_error bad_request notification and closes that connection only."""
    server = Server(methods(SlowWork()))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            bystander = await Peer.connect(running.path)
            assert ok(await bystander.call(1, "echo", {})) == {}
            peer = await Peer.connect(running.path)
            await peer.send(encode_request(1, "echo", {"first": 1}) + b"\xc1garbage")
            frames = await peer.until_closed()
            assert ok(frames[0]) == {"first": 1}
            assert len(frames) == 2 and is_protocol_error(frames[1], "bad_request"), frames
            assert ok(await bystander.call(2, "echo", {"b": 2})) == {"b": 2}
            assert server.stats()["protocol_errors"] == 1
            await bystander.aclose()


async def test_oversized_frame_gets_frame_too_large_and_close(sock_dir: Path) -> None:
    """A frame over max_frame gets a frame_too_large notification and the close."""
    limits = ServerLimits(protocol=Limits(max_frame=1024))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork()), limits), sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(encode_request(1, "echo", {"blob": b"x" * 4096}))
            frames = await peer.until_closed()
            assert len(frames) == 1 and is_protocol_error(frames[0], "frame_too_large"), frames


async def test_violation_with_msgid_keeps_the_connection(sock_dir: Path) -> None:
    """Too-deep args or a non-string method get a bad_request reply; the connection stays."""
    limits = ServerLimits(protocol=Limits(max_depth=3))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork()), limits), sock_dir) as running:
            peer = await Peer.connect(running.path)
            deep = err(await peer.call(1, "echo", {"a": [[[1]]]}))
            assert deep["code"] == "bad_request" and "deeper than 3" in deep["message"]
            await peer.send(msgpack.packb([0, 2, 42, [{}]]))
            reply = await peer.receive()
            assert reply[:2] == [1, 2] and err(reply)["code"] == "bad_request"
            assert ok(await peer.call(3, "echo", {"a": [[1]]})) == {"a": [[1]]}
            await peer.aclose()


async def test_violation_without_msgid_closes(sock_dir: Path) -> None:
    """A request whose msgid is out of range gets protocol_error bad_request and the close."""
    with trio.fail_after(IO_TIMEOUT):
        async with serving(Server(methods(SlowWork())), sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(msgpack.packb([0, 2**32, "echo", [{}]]))
            frames = await peer.until_closed()
            assert len(frames) == 1 and is_protocol_error(frames[0], "bad_request"), frames


# -- drain ------------------------------------------------------------------------------------
async def test_drain_finishes_in_flight_and_refuses_new_work(sock_dir: Path) -> None:
    """During drain: in-flight replies are delivered, new requests get shutting_down, no accepts."""
    slow = SlowWork()
    server = Server(methods(slow))
    drained: list[bool] = []
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(*(encode_request(n, "slow", {"n": n}) for n in range(3)))
            await settle()
            assert sorted(slow.started) == [0, 1, 2]
            async with trio.open_nursery() as nursery:

                async def drain() -> None:
                    drained.append(await server.drain(grace=60.0))

                nursery.start_soon(drain)
                await settle()
                assert server.draining
                for msgid, method in ((10, "echo"), (11, "slow")):
                    refused = err(await peer.call(msgid, method, {"n": 99}))
                    assert refused["code"] == "shutting_down"
                assert 99 not in slow.started
                with pytest.raises(OSError):
                    await trio.open_unix_socket(str(running.path))
                slow.release(0, 1, 2)
                replies = [await peer.receive() for _ in range(3)]
                assert sorted(ok(r)["n"] for r in replies) == [0, 1, 2]
            assert drained == [True]
            assert await peer.until_closed() == []
            await running.stopped.wait()
            assert slow.cancelled == []


async def test_drain_grace_expiry_cancels_the_rest(
    sock_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    """After grace, unfinished handlers are cancelled and answered shutting_down (started),
    drain returns False and serve ends."""
    slow = SlowWork()
    server = Server(methods(slow))
    with trio.fail_after(IO_TIMEOUT * 10):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            await peer.send(*(encode_request(n, "slow", {"n": n}) for n in range(3)))
            await settle()
            slow.release(1)
            assert ok(await peer.receive())["n"] == 1
            start = trio.current_time()
            assert await server.drain(grace=5.0) is False
            assert trio.current_time() - start >= 5.0
            await running.stopped.wait()
            assert sorted(slow.cancelled) == [0, 2]
            replies = await peer.until_closed()
            assert sorted(r[1] for r in replies) == [0, 2]
            for reply in replies:
                assert reply[2]["code"] == "shutting_down"
                assert reply[2]["details"] == {"started": True}
            assert server.in_flight == 0


async def test_drain_with_nothing_in_flight_returns_true(sock_dir: Path) -> None:
    """drain() on an idle server returns True and ends serve, closing idle connections."""
    server = Server(methods(SlowWork()))
    with trio.fail_after(IO_TIMEOUT):
        async with serving(server, sock_dir) as running:
            peer = await Peer.connect(running.path)
            assert ok(await peer.call(1, "echo", {})) == {}
            assert await server.drain(grace=30.0) is True
            await running.stopped.wait()
            assert await peer.until_closed() == []


# -- listener ---------------------------------------------------------------------------------
async def test_listener_refuses_a_live_socket(sock_dir: Path) -> None:
    """bind_unix_listener raises SocketInUse where a live listener answers, and leaves it be."""
    path = sock_dir / "kiln.sock"
    live = bind_unix_listener(path)
    try:
        with pytest.raises(SocketInUse, match="another process is listening"):
            bind_unix_listener(path)
        assert stat.S_ISSOCK(path.lstat().st_mode)
        with trio.fail_after(IO_TIMEOUT):
            client = await trio.open_unix_socket(str(path))
            await client.send_all(b"ping")
            # The liveness probe's own connection sits in the backlog first (it sends nothing).
            received = b""
            while received != b"ping":
                server_side, _ = await live.accept()
                received = await server_side.recv(4)
                server_side.close()
            await client.aclose()
    finally:
        live.close()


async def test_listener_replaces_a_stale_socket(sock_dir: Path) -> None:
    """A socket file nobody listens on is replaced by a working listener."""
    path = sock_dir / "kiln.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # leaves the socket file behind, as a killed daemon does
    assert stat.S_ISSOCK(path.lstat().st_mode)
    listener = bind_unix_listener(path)
    try:
        with trio.fail_after(IO_TIMEOUT):
            client = await trio.open_unix_socket(str(path))
            accepted, _ = await listener.accept()
            accepted.close()
            await client.aclose()
    finally:
        listener.close()


async def test_listener_refuses_a_regular_file(sock_dir: Path) -> None:
    """A regular file at the socket path is reported and left untouched."""
    path = sock_dir / "kiln.sock"
    path.write_text("precious")
    with pytest.raises(SocketInUse, match="not a socket"):
        bind_unix_listener(path)
    assert path.read_text() == "precious"


@pytest.mark.parametrize("mode", [0o660, 0o600])
async def test_listener_sets_the_socket_mode(sock_dir: Path, mode: int) -> None:
    """The socket file gets the requested mode (0660 by default) whatever the umask."""
    path = sock_dir / "nested" / "kiln.sock"
    old = os.umask(0o002)
    try:
        listener = bind_unix_listener(path) if mode == 0o660 else bind_unix_listener(path, mode)
        assert os.umask(0o002) == 0o002, "bind_unix_listener restores the process umask"
    finally:
        os.umask(old)
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == mode
    finally:
        listener.close()
