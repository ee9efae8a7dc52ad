"""One connection's replies over a real socket pair: the time spent writing them is kept for
the peer's fair share (a flood's replies are most of what it costs the loop)."""

from __future__ import annotations

import socket

import trio

from claykiln.daemon.rpc.replies import Replies


async def test_every_write_is_timed_and_taken_once() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        ours.setblocking(False)
        sent: list[int] = []
        replies = Replies(ours.fileno(), lambda: sent.append(1))
        assert replies.take_write_seconds() == 0.0
        replies.queue(b"a" * 1000)  # a lone reply: written at once
        first = replies.take_write_seconds()
        assert first > 0.0
        assert replies.take_write_seconds() == 0.0  # taken once
        replies.hold = True  # a reader batching a chunk's replies
        replies.queue(b"b" * 500)
        replies.queue(b"c" * 500)
        assert replies.take_write_seconds() == 0.0  # queued, not written yet
        replies.hold = False
        with trio.fail_after(10):
            await replies.flush()
        assert replies.take_write_seconds() > 0.0 and sent
        assert theirs.recv(4096) == b"a" * 1000 + b"b" * 500 + b"c" * 500


async def test_waiting_for_a_peer_that_does_not_read_is_not_charged() -> None:
    """A flush blocked on a full socket buffer waits, untimed: only the writes are the peer's
    work (a never-reading client would otherwise be charged its whole stall)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        replies = Replies(ours.fileno(), lambda: None)
        replies.hold = True
        frame = b"x" * 1_000_000  # far more than the kernel buffers
        replies.queue(frame)
        replies.hold = False
        stall = 0.3  # seconds the peer reads nothing while the flush waits
        got = bytearray()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replies.flush)
                await trio.sleep(stall)
                assert replies.writing  # blocked on the full buffer
                theirs.setblocking(False)
                while len(got) < len(frame):
                    await trio.lowlevel.wait_readable(theirs)
                    got += theirs.recv(1 << 20)
        assert bytes(got) == frame
        assert replies.take_write_seconds() < stall  # the writes, not the stall
