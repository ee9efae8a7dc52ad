"""Reading one connection's socket, and telling a peer that hung up from one that only stopped
sending.

- ``receive()``: the next chunk (``b""`` at EOF or a reset). Reads go to the file descriptor
  directly: trio's SocketStream spends a scheduler pass after every successful receive.
- ``hung_up()``: the peer closed its whole end (POLLHUP), so nobody will read a reply; a peer
  that only shut its write side (``shutdown(SHUT_WR)``, EOF on our side) has not.
- ``wait_hangup()``: while the connection does not read (backpressure), return once the peer
  hangs up, reading nothing; never returns while its requests wait unread.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Final

import trio

__all__ = ["HANGUP_POLL", "RECV_SIZE", "Inbound"]

RECV_SIZE: Final = 65536
HANGUP_POLL: Final = 0.2  # seconds between checks that a half-closed peer is still there


class Inbound:
    """The reading side of one connected socket (non-blocking)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._drained = True  # the last read left the socket empty: wait before reading again

    async def receive(self) -> bytes:
        """The next chunk from the socket (b"" at EOF or a reset). Waits for readability first
        when the last read drained the socket, which is also the reader's checkpoint; a read that
        filled the buffer is followed by another at once, with an explicit checkpoint."""
        if self._drained:
            await trio.lowlevel.wait_readable(self._fd)
        else:
            await trio.lowlevel.checkpoint()
        while (data := self.read_now()) is None:
            await trio.lowlevel.wait_readable(self._fd)
        return data

    def read_now(self) -> bytes | None:
        """One non-blocking read: the chunk, b"" at EOF or a reset, None when nothing is there
        yet (the poller's fast path reads with it too)."""
        try:
            data = os.read(self._fd, RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                return b""
            raise
        self._drained = len(data) < RECV_SIZE
        return data

    def hung_up(self) -> bool:
        """True when the peer closed its whole end, not only its write side."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))

    async def wait_hangup(self) -> None:
        """Return once the peer hung up; sleep forever while it has sent bytes not read yet."""
        try:
            peek = await self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            peek = b""
        if peek:
            await trio.sleep_forever()  # requests are waiting: only room lets us read on
        # EOF: hung up, or half-closed (the peer still reads its replies). No event says when a
        # half-closed peer closes the rest (POLLHUP), so look again every HANGUP_POLL seconds.
        while not self.hung_up():  # noqa: ASYNC110
            await trio.sleep(HANGUP_POLL)
