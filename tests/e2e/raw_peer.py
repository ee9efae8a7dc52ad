"""A raw msgpack-rpc peer for hostile-client tests: bytes out, frames in, no client library.

The client library would be polite (it reads its replies, never half-closes, resends what a
draining daemon refused); these tests need a peer that is not.
"""

from __future__ import annotations

from typing import Any

import msgpack
import trio

RECV_SIZE = 262_144


def request(msgid: int, method: str, args: dict[str, Any] | None = None) -> bytes:
    """A request frame ``[0, msgid, method, [args]]``."""
    out: bytes = msgpack.packb([0, msgid, method, [args or {}]], use_bin_type=True)
    return out


class RawPeer:
    """One Unix-socket connection to a daemon, read and written by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
        self.buffered: list[Any] = []

    @classmethod
    async def connect(cls, path: object) -> RawPeer:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, *frames: bytes) -> None:
        """Write ``frames`` back to back (a write the daemon closed mid-way is ignored)."""
        try:
            await self.stream.send_all(b"".join(frames))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _read(self) -> bool:
        """Read once; False at EOF or a reset."""
        try:
            data = await self.stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if not data:
            return False
        self.unpacker.feed(data)
        self.buffered.extend(self.unpacker)
        return True

    async def frames(self, count: int) -> list[Any]:
        """The next ``count`` frames (AssertionError if the daemon closes first)."""
        while len(self.buffered) < count:
            assert await self._read(), f"closed after {len(self.buffered)} of {count} frames"
        out, self.buffered = self.buffered[:count], self.buffered[count:]
        return out

    async def call(self, msgid: int, method: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and return its response frame (other frames before it are kept)."""
        await self.send(request(msgid, method, args))
        while True:
            for index, frame in enumerate(self.buffered):
                if frame[0] == 1 and frame[1] == msgid:
                    del self.buffered[index]
                    return frame
            assert await self._read(), f"closed before the reply to {msgid}"

    async def until_closed(self) -> list[Any]:
        """Every frame until the daemon closes the connection."""
        while await self._read():
            pass
        out, self.buffered = self.buffered, []
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()
