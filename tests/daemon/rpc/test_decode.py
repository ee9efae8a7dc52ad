"""Decoding bounded in work and messages bounded in size (issue 12): the container budget, the
nesting walk, excerpts, client notifications, shared answer framing."""

from __future__ import annotations

import gc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claykiln.daemon.rpc.decode import SMALL_WALK, _small_within
from claykiln.daemon.rpc.protocol import (
    EXCERPT_CHARS,
    FEED_SLICE,
    FrameParser,
    Limits,
    Notification,
    Request,
    Violation,
    clamp,
    classify,
    encode_body,
    encode_response,
    encode_response_body,
    excerpt,
    nesting,
)

BUDGET = Limits(max_containers=1000)

values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8)),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=40,
)


def reference(obj: Any, depth: int = 1) -> tuple[int, int]:
    """(depth, containers) of ``obj``, recursively: what ``nesting`` must agree with."""
    if not isinstance(obj, list | dict):
        return 0, 0
    children = obj.values() if isinstance(obj, dict) else obj
    deepest, count = depth, 1
    for child in children:
        d, c = reference(child, depth + 1)
        deepest, count = max(deepest, d), count + c
    return deepest, count


@given(values)
@settings(max_examples=300)
def test_nesting_agrees_with_a_recursive_walk(obj: Any) -> None:
    """The level walk refuses exactly what is deeper or holds more containers than allowed."""
    depth, count = reference(obj)
    for max_depth in (1, 2, 3, 32):
        for max_containers in (1, 3, 10, None):
            why = nesting(obj, max_depth, max_containers)
            too_deep = depth > max_depth
            too_many = max_containers is not None and count > max_containers
            assert (why is None) == (not too_deep and not too_many), (obj, max_depth, why)


@given(st.dictionaries(st.text(max_size=4), values, max_size=6))
@settings(max_examples=300)
def test_the_small_walk_never_admits_what_the_level_walk_refuses(args: dict[str, Any]) -> None:
    """``_small_within`` (classify's fast path) says yes only where ``nesting`` does, and for a
    map of fewer than ``SMALL_WALK`` values it says exactly what ``nesting`` says."""
    _, count = reference(args)
    for max_depth in (1, 2, 3, 32):
        for max_containers in (1, 3, 10, None):
            fast = _small_within(args, max_depth, max_containers)
            full = nesting(args, max_depth, max_containers) is None
            assert not fast or full, (args, max_depth, max_containers)
            if count < SMALL_WALK // 4:  # few containers, few values: decided here
                small = sum(1 for _ in _values(args)) < SMALL_WALK
                assert not small or fast == full, (args, max_depth, max_containers)


def _values(obj: Any) -> Any:
    """Every value under ``obj`` (what the small walk visits)."""
    for value in obj.values() if isinstance(obj, dict) else obj:
        yield value
        if isinstance(value, list | dict):
            yield from _values(value)


def test_a_nested_request_is_refused_by_the_full_checks_after_the_fast_path() -> None:
    """A row nested past max_depth, or with more containers than allowed, still gets the precise
    refusal; a row within both is a request (the fast path)."""
    limits = Limits(max_depth=3, max_containers=5)
    ok_frame = [0, 1, "call", [{"json": {"a": {"b": 1}}, "q": [1, 2]}]]
    assert isinstance(classify(ok_frame, limits), Request)
    deep = classify([0, 2, "call", [{"json": {"a": {"b": {"c": 1}}}}]], limits)
    assert isinstance(deep, Violation) and "deeper than 3" in deep.message and deep.msgid == 2
    many = classify([0, 3, "call", [{"rows": [[], [], [], [], [], []]}]], limits)
    assert isinstance(many, Violation) and many.code == "frame_too_large"
    long = {"rows": list(range(SMALL_WALK + 10)), "json": {"a": 1}}  # past the small walk
    assert isinstance(classify([0, 4, "call", [long]], Limits()), Request)


def empty_arrays_frame(rows: int, per_row: int) -> bytes:
    frame: bytes = msgpack.packb([0, 1, "hello", [{"a": [[[]] * per_row] * rows}]])
    return frame


def test_a_frame_over_the_container_budget_is_refused_before_it_is_whole() -> None:
    """Fed in slices, a frame of 50,000 empty arrays is refused (fatal frame_too_large) long
    before its last byte: decoding stops at about the budget."""
    frame = empty_arrays_frame(5, 10_000)
    parser = FrameParser(BUDGET)
    fed = 0
    events: list[Any] = []
    while not events and fed < len(frame):
        events = parser.feed(frame[fed : fed + FEED_SLICE])
        fed += FEED_SLICE
    assert fed < len(frame) // 4
    assert isinstance(events[0], Violation) and events[0].fatal
    assert events[0].code == "frame_too_large" and "1000 arrays and maps" in events[0].message
    assert parser.dead


def tracked_lists() -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is list)


def test_a_refused_frame_lets_go_of_what_it_built_at_once() -> None:
    """The containers a refused frame built are freed when it is refused, not when the dead
    connection is collected: kept, every collection walked them (20-27 ms pauses beside the
    abuse bench's worst-case frames)."""
    frame = empty_arrays_frame(5, 10_000)
    gc.collect()
    gc.disable()  # only reference counting may free them
    try:
        before = tracked_lists()
        parser = FrameParser(BUDGET)
        events: list[Any] = []
        fed = 0
        while not events:
            events = parser.feed(frame[fed : fed + FEED_SLICE])
            fed += FEED_SLICE
        assert parser.dead and events[0].code == "frame_too_large"
        assert tracked_lists() - before < 100  # the parser is alive; what it built is gone
        assert parser.feed(frame[fed:]) == []  # and it reads nothing more
    finally:
        gc.enable()


def test_closing_a_parser_frees_a_half_received_frame() -> None:
    """A peer that hangs up mid-frame: ``close`` frees the frame's half-built containers."""
    frame = empty_arrays_frame(1, 5_000)
    parser = FrameParser(Limits(max_containers=10_000))
    gc.collect()
    gc.disable()
    try:
        before = tracked_lists()
        assert parser.feed(frame[: len(frame) // 2]) == []
        assert parser.partial_bytes > 0
        assert tracked_lists() - before >= 1_000  # msgpack holds what it built so far
        parser.close()
        assert tracked_lists() - before < 100
        assert parser.dead and parser.feed(frame) == []
    finally:
        gc.enable()


def test_a_small_frame_over_the_budget_is_refused_with_its_msgid() -> None:
    """A whole frame over the budget (caught by the exact count) keeps its msgid: the peer
    gets an error reply for it, then the close."""
    frame = empty_arrays_frame(1, 1200)
    (event,) = FrameParser(BUDGET).feed(frame)
    assert isinstance(event, Violation)
    assert (event.code, event.msgid, event.fatal) == ("frame_too_large", 1, True)


def test_frames_within_the_budget_pass_whatever_the_chunking() -> None:
    """Many frames just under the budget, fed a byte at a time or at once, all decode."""
    frame = empty_arrays_frame(1, 990)
    stream = frame * 5
    whole = FrameParser(BUDGET).feed(stream)
    parser = FrameParser(BUDGET)
    bytewise = [event for i in range(len(stream)) for event in parser.feed(stream[i : i + 1])]
    assert whole == bytewise
    assert len(whole) == 5 and all(isinstance(e, Request) for e in whole)


def test_the_collector_is_paused_only_while_decoding() -> None:
    """feed() leaves the collector as it found it, enabled or disabled."""
    frame = empty_arrays_frame(1, 10)
    FrameParser(BUDGET).feed(frame)
    assert gc.isenabled()
    gc.disable()
    try:
        FrameParser(BUDGET).feed(frame)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_partial_bytes_and_frames_count_the_stream() -> None:
    """partial_bytes is the incomplete frame buffered, frames the frames completed."""
    frame = empty_arrays_frame(1, 3)
    parser = FrameParser()
    parser.feed(frame + frame[:4])
    assert (parser.frames, parser.partial_bytes) == (1, 4)
    parser.feed(frame[4:])
    assert (parser.frames, parser.partial_bytes) == (2, 0)


@pytest.mark.parametrize(
    ("frame", "args", "params"),
    [
        ([2, "nvim_subscribe", ["BufEnter"]], {}, ("BufEnter",)),
        ([2, "m", [1, 2, 3]], {}, (1, 2, 3)),
        ([2, "m", [{"a": 1}]], {"a": 1}, ()),
        ([2, "m", {"a": 1}], {"a": 1}, ()),
        ([2, "m", []], {}, ()),
        ([2, "m", [{1: 2}]], {}, ({1: 2},)),
        ([2, b"nvim_set_client_info", ["x", {}]], {}, ("x", {})),
    ],
)
def test_any_well_formed_notification_is_a_notification(
    frame: Any, args: dict[str, Any], params: tuple[Any, ...]
) -> None:
    """[2, method, params] with any params array (or a bare map), the method str or bin, is a
    notification."""
    method = frame[1].decode() if isinstance(frame[1], bytes) else frame[1]
    assert classify(frame, Limits()) == Notification(method, args, params)


@given(st.one_of(st.text(), st.binary(), values, st.integers()))
def test_excerpt_is_short_whatever_the_value(value: Any) -> None:
    """An excerpt is a few dozen characters at most, whatever it renders."""
    assert len(excerpt(value)) <= 4 * EXCERPT_CHARS + 40


def test_excerpt_keeps_the_start_and_says_the_length() -> None:
    """A long string keeps its first characters and its length; bytes likewise."""
    text = excerpt("A" * 1_000_000)
    assert text.startswith("'" + "A" * EXCERPT_CHARS) and "(1000000 chars)" in text
    assert "(1000000 bytes)" in excerpt(b"\x00" * 1_000_000)
    assert excerpt([1, 2, 3]) == "list of 3 items"
    assert excerpt("short") == "'short'"


def test_clamp_cuts_long_messages_only() -> None:
    """clamp leaves a short message alone and marks a cut one."""
    assert clamp("fine") == "fine"
    cut = clamp("x" * 5000)
    assert len(cut) < 1100 and "cut at 1024 of 5000" in cut


@given(st.integers(0, 2**32 - 1), values)
def test_a_shared_body_frames_like_a_whole_response(msgid: int, result: Any) -> None:
    """encode_response_body(msgid, encode_body(r)) is the bytes encode_response would give."""
    assert encode_response_body(msgid, encode_body(result)) == encode_response(msgid, None, result)
