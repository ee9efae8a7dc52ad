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


async def test_send_now_writes_what_the_kernel_takes_and_leaves_the_rest_to_the_writer() -> None:
    """The poller's fast path flushes without blocking: a batch the kernel takes whole leaves
    nothing; against a full buffer the rest stays queued, in order, and the writer task sends
    it once the peer reads."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        ours.setblocking(False)
        replies = Replies(ours.fileno(), lambda: None)
        replies.hold = True
        replies.queue(b"x" * 100)
        replies.queue(b"y" * 100)
        replies.hold = False
        replies.send_now()
        assert replies.pending == [] and replies.unsent == 0
        assert theirs.recv(4096) == b"x" * 100 + b"y" * 100
        big = bytes(range(256)) * 8192  # 2 MiB: more than the socket buffers hold
        replies.hold = True
        replies.queue(big)
        replies.hold = False
        replies.send_now()
        assert 0 < replies.unsent < len(big) and replies.pending
        got = bytearray()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replies.writer)  # woken by send_now for the rest
                while len(got) < len(big):
                    await trio.lowlevel.wait_readable(theirs)
                    got += theirs.recv(1 << 20)
                replies.close()
        assert bytes(got) == big and replies.unsent == 0


async def test_send_now_to_a_peer_that_went_away_drops_the_replies() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        ours.setblocking(False)
        told: list[int] = []
        replies = Replies(ours.fileno(), lambda: told.append(1))
        theirs.close()
        replies.hold = True
        replies.queue(b"lost")
        replies.hold = False
        replies.send_now()
        assert replies.broken and replies.pending == [] and replies.unsent == 0 and told
