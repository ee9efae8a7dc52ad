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
