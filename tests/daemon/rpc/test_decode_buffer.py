"""A frame parser's buffer starts small and is reused in place (issue 12, item 13: a 1 MiB
buffer per connection, walked end to end by a long-lived caller, was 16 MB of RSS)."""

from __future__ import annotations

import tracemalloc

import msgpack

from claykiln.daemon.rpc.decode import UNPACK_BUFFER, FrameParser
from claykiln.daemon.rpc.frames import Limits


def test_a_new_parser_allocates_its_small_buffer_only() -> None:
    """A parser for 1 MiB frames allocates about UNPACK_BUFFER bytes, not a MiB."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parser = FrameParser(Limits(max_frame=1024 * 1024))
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert parser.frames == 0
    assert allocated < UNPACK_BUFFER + 64 * 1024


def test_many_small_frames_reuse_the_buffer() -> None:
    """4 MiB of small frames through one parser leave it no bigger than it started."""
    frame = msgpack.packb([0, 1, "call", [{"operation": "me", "pad": "x" * 900}]])
    parser = FrameParser(Limits(max_frame=1024 * 1024))
    tracemalloc.start()
    try:
        parser.feed(frame)
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(4 * 1024 * 1024 // len(frame)):
            assert len(parser.feed(frame)) == 1
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024


def test_a_big_frame_still_decodes() -> None:
    """A frame far larger than the starting buffer grows it and decodes whole."""
    parser = FrameParser(Limits(max_frame=1024 * 1024))
    big = msgpack.packb([0, 7, "call", [{"operation": "me", "pad": "y" * 900_000}]])
    events = parser.feed(big[:1000]) + parser.feed(big[1000:])
    assert len(events) == 1
    assert events[0].args["pad"] == "y" * 900_000  # type: ignore[union-attr]
