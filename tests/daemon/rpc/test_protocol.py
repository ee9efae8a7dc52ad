"""The sans-I/O msgpack-rpc core: frame parser, classification, limits, encoders (issue 2)."""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claykiln.daemon.rpc.protocol import (
    NOTIFICATION,
    REQUEST,
    RESPONSE,
    FrameParser,
    Limits,
    Notification,
    Request,
    Response,
    Violation,
    classify,
    encode_notification,
    encode_request,
    encode_response,
    error_map,
)

MSGID_MAX = 2**32 - 1
EVENT_TYPES = (Request, Response, Notification, Violation)
SMALL = Limits(max_frame=256, max_array_len=16, max_map_len=16, max_depth=4)


def packb(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` as a client would write them."""
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def feed_chunks(parser: FrameParser, data: bytes, cuts: list[int]) -> list[Any]:
    """Feed ``data`` split at the (sorted, deduplicated) ``cuts`` and collect every event."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    events: list[Any] = []
    for start, end in itertools.pairwise(bounds):
        events.extend(parser.feed(data[start:end]))
    return events


def nested_list(depth: int) -> Any:
    """A list nested ``depth`` levels deep (depth 1 is ``[]``)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# -- strategies -------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=15,
)
arg_maps = st.dictionaries(st.text(max_size=12), values, max_size=6)
msgids = st.integers(min_value=0, max_value=MSGID_MAX)
requests = st.builds(Request, msgid=msgids, method=st.text(max_size=30), args=arg_maps)
# Anything msgpack can carry, including shapes a client should never send (top-level scalars,
# int/bytes map keys, wrong frame types).
any_msgpack = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(
            st.one_of(st.text(max_size=4), st.integers(-(2**63), 2**64 - 1), st.binary(max_size=4)),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
frame_like = st.one_of(
    any_msgpack,
    st.lists(any_msgpack, min_size=1, max_size=5).map(lambda t: [kind_hint(t), *t[1:]]),
)


def kind_hint(items: list[Any]) -> Any:
    """Bias the first element toward a real frame type so classify's branches all get hit."""
    first = items[0]
    if isinstance(first, int) and not isinstance(first, bool):
        return first % 4
    return first


# -- hostile input never crashes --------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(blob=st.binary(max_size=2048), data=st.data())
def test_any_bytes_any_chunking_never_raises(blob: bytes, data: st.DataObject) -> None:
    """Arbitrary bytes in arbitrary chunks yield only protocol events, never an exception."""
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
    parser = FrameParser(SMALL)
    events = feed_chunks(parser, blob, cuts)
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    fatal = [i for i, e in enumerate(events) if isinstance(e, Violation) and e.fatal]
    if fatal:
        assert fatal == [len(events) - 1], "a fatal violation is the last event, and only one"
        assert parser.dead


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=2048), data=st.data())
def test_chunking_does_not_change_events_for_small_input(blob: bytes, data: st.DataObject) -> None:
    """Well under max_frame, the events do not depend on how the bytes were split."""
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
    assert feed_chunks(FrameParser(), blob, cuts) == FrameParser().feed(blob)


FATAL_TRIGGERS = (
    b"\xc1",  # never valid msgpack
    b"\xdd\xff\xff\xff\xff",  # array32 header far over max_array_len
    b"\x91" * 2000,  # nesting past msgpack's stack
    encode_request(1, "call", {"body": "x" * 300}),  # over max_frame
)


@settings(max_examples=100, deadline=None)
@given(trigger=st.sampled_from(FATAL_TRIGGERS), blob=st.binary(max_size=512), request=requests)
def test_dead_parser_yields_nothing_more(trigger: bytes, blob: bytes, request: Request) -> None:
    """After a fatal violation, neither garbage nor a valid request produces an event."""
    parser = FrameParser(SMALL)
    events = parser.feed(trigger)
    assert len(events) == 1 and isinstance(events[0], Violation) and events[0].fatal
    assert parser.dead
    assert parser.feed(blob) == []
    assert parser.feed(encode_request(request.msgid, request.method, request.args)) == []


@settings(max_examples=200, deadline=None)
@given(obj=frame_like)
def test_classify_any_decoded_object(obj: Any) -> None:
    """classify() turns any decoded msgpack object into exactly one event, never raising."""
    event = classify(obj, SMALL)
    assert isinstance(event, EVENT_TYPES)
    if isinstance(event, Violation):
        assert not event.fatal, "classify judges one decoded frame; fatality is the parser's"
        assert event.code == "bad_request"


@settings(max_examples=80, deadline=None)
@given(frames=st.lists(frame_like, max_size=6), data=st.data())
def test_hostile_frames_in_a_stream(frames: list[Any], data: st.DataObject) -> None:
    """A stream of well-formed but arbitrary msgpack objects yields one event per object."""
    blob = b"".join(packb(f) for f in frames)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=10))
    events = feed_chunks(FrameParser(), blob, cuts)
    assert events == [classify(f, Limits()) for f in frames]


# -- round trip -------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(request=requests, data=st.data())
def test_request_round_trip_any_chunking(request: Request, data: st.DataObject) -> None:
    """encode_request fed in any split decodes to an equal Request."""
    blob = encode_request(request.msgid, request.method, request.args)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=len(blob) + 1))
    assert feed_chunks(FrameParser(), blob, cuts) == [request]


@settings(max_examples=50, deadline=None)
@given(batch=st.lists(requests, min_size=1, max_size=8), data=st.data())
def test_many_frames_come_out_in_order(batch: list[Request], data: st.DataObject) -> None:
    """Concatenated requests come out one event each, in the order sent."""
    blob = b"".join(encode_request(r.msgid, r.method, r.args) for r in batch)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=30))
    assert feed_chunks(FrameParser(), blob, cuts) == batch


def test_byte_at_a_time() -> None:
    """Feeding one byte at a time completes each frame exactly on its last byte."""
    first = encode_request(7, "call", {"operation": "clay.push", "params": {"row": [1, 2.5]}})
    second = encode_request(8, "hello")
    parser = FrameParser()
    out = [parser.feed(first[i : i + 1]) for i in range(len(first))]
    assert out[:-1] == [[]] * (len(first) - 1)
    assert out[-1] == [Request(7, "call", {"operation": "clay.push", "params": {"row": [1, 2.5]}})]
    assert [parser.feed(second[i : i + 1]) for i in range(len(second))][-1] == [
        Request(8, "hello", {})
    ]
    assert parser.feed(b"") == []


@given(msgid=msgids, error=st.one_of(st.none(), st.just({"code": "x", "message": "y"})))
def test_response_and_notification_parse(msgid: int, error: dict[str, Any] | None) -> None:
    """Responses and notifications from the peer decode into their events."""
    blob = encode_response(msgid, error, [1, "two"]) + encode_notification("tick", {"n": 1})
    assert FrameParser().feed(blob) == [
        Response(msgid, error, [1, "two"]),
        Notification("tick", {"n": 1}),
    ]


# -- limits -----------------------------------------------------------------------------------
def test_frame_over_max_frame_is_fatal() -> None:
    """A frame bigger than max_frame is fatal frame_too_large, however it is chunked."""
    blob = encode_request(1, "call", {"body": "x" * 300})
    for step in (1, 7, 100, len(blob)):
        parser = FrameParser(Limits(max_frame=256))
        events = feed_chunks(parser, blob, list(range(step, len(blob), step)))
        assert len(events) == 1 and isinstance(events[0], Violation), step
        assert (events[0].code, events[0].fatal, events[0].msgid) == ("frame_too_large", True, None)
        assert "256-byte limit" in events[0].message


def test_frame_at_max_frame_passes() -> None:
    """A frame of exactly max_frame bytes is accepted."""
    base = len(encode_request(1, "call", {"body": ""}))
    blob = encode_request(1, "call", {"body": "x" * (200 - base - 1)})  # str8 header: +1 byte
    assert len(blob) == 200
    assert FrameParser(Limits(max_frame=200)).feed(blob) == [
        Request(1, "call", {"body": "x" * (200 - base - 1)})
    ]


def test_frame_of_small_items_over_max_frame_is_fatal() -> None:
    """A 2.6 KB frame of small integers against max_frame=100 is fatal frame_too_large."""
    blob = encode_request(1, "call", {"x": list(range(1000))})
    assert len(blob) > 2000
    events = FrameParser(Limits(max_frame=100, max_array_len=10_000)).feed(blob)
    assert [(type(e), getattr(e, "code", None)) for e in events] == [(Violation, "frame_too_large")]


def test_frame_under_limit_followed_by_another_survives_socket_chunking() -> None:
    """A 1,040,020-byte request (< 1 MiB) then a second one, read 100 B then 64 KiB at a time."""
    big = encode_request(1, "call", {"body": "x" * 1_040_000})
    small = encode_request(2, "hello", {"pad": "y" * 60_000})
    assert len(big) < Limits().max_frame
    blob = big + small
    cuts = [100, *range(100 + 65536, len(blob), 65536)]
    events = feed_chunks(FrameParser(), blob, cuts)
    assert [type(e) for e in events] == [Request, Request]


@pytest.mark.parametrize(
    ("header", "what"),
    [
        (b"\xdc\x00\x11", "array16"),
        (b"\xdd\xff\xff\xff\xff", "array32"),
        (b"\xde\x00\x11", "map16"),
    ],
)
def test_container_length_over_limit_is_fatal_at_the_header(header: bytes, what: str) -> None:
    """A container header claiming more items than allowed is fatal before any item arrives."""
    parser = FrameParser(SMALL)
    events = parser.feed(header)
    assert len(events) == 1 and isinstance(events[0], Violation), what
    assert (events[0].code, events[0].fatal) == ("frame_too_large", True)
    assert parser.dead


def test_container_length_over_limit_inside_args_is_fatal() -> None:
    """An over-long array nested in args is fatal, even though the msgid was already read."""
    blob = encode_request(5, "call", {"rows": list(range(17))})
    events = FrameParser(SMALL).feed(blob)
    assert len(events) == 1 and isinstance(events[0], Violation)
    assert (events[0].code, events[0].fatal) == ("frame_too_large", True)


def test_container_lengths_at_the_limit_pass() -> None:
    """Arrays and maps of exactly max_array_len / max_map_len items are accepted."""
    args = {"rows": list(range(16)), "m": {str(i): i for i in range(16)}}
    assert FrameParser(SMALL).feed(encode_request(5, "call", args)) == [Request(5, "call", args)]


def test_nesting_deeper_than_max_depth_is_a_non_fatal_bad_request() -> None:
    """Args nesting past max_depth get bad_request with the msgid; the parser stays usable."""
    parser = FrameParser(SMALL)
    # args itself is level 1, so {"v": nested_list(3)} is exactly max_depth=4 deep.
    assert parser.feed(encode_request(1, "m", {"v": nested_list(3)})) == [
        Request(1, "m", {"v": nested_list(3)})
    ]
    deep = parser.feed(encode_request(2, "m", {"v": [{"w": nested_list(2)}]}))
    assert len(deep) == 1 and isinstance(deep[0], Violation)
    assert (deep[0].code, deep[0].msgid, deep[0].fatal) == ("bad_request", 2, False)
    assert "deeper than 4" in deep[0].message
    assert not parser.dead
    assert parser.feed(encode_request(3, "m")) == [Request(3, "m", {})]


def test_nesting_past_msgpack_stack_is_fatal_not_a_crash() -> None:
    """Nesting deeper than msgpack's own stack (1,024) is a fatal bad_request, not an error."""
    events = FrameParser().feed(b"\x91" * 2000)
    assert len(events) == 1 and isinstance(events[0], Violation)
    assert (events[0].code, events[0].fatal) == ("bad_request", True)


def test_container_map_key_is_fatal_not_a_crash() -> None:
    """A map key that is an array (unhashable in Python) is a fatal bad_request, not an error."""
    blob = packb([REQUEST, 1, "m", [{"a": {(1, 2): 3}}]])
    events = FrameParser().feed(blob)
    assert len(events) == 1 and isinstance(events[0], Violation)
    assert (events[0].code, events[0].fatal) == ("bad_request", True)


def test_ext_types_are_refused() -> None:
    """msgpack ext types (max_ext_len=0) are fatal: the protocol uses none."""
    events = FrameParser().feed(packb([REQUEST, 1, "m", [{"t": msgpack.ExtType(1, b"ab")}]]))
    assert len(events) == 1 and isinstance(events[0], Violation) and events[0].fatal


@pytest.mark.parametrize(
    ("frame", "msgid", "needle"),
    [
        ([REQUEST, -1, "m", [{}]], None, "msgid"),
        ([REQUEST, MSGID_MAX + 1, "m", [{}]], None, "msgid"),
        ([REQUEST, "7", "m", [{}]], None, "msgid"),
        ([REQUEST, True, "m", [{}]], None, "msgid"),
        ([REQUEST, 1.0, "m", [{}]], None, "msgid"),
        ([REQUEST, 9, 42, [{}]], 9, "method must be a string"),
        ([REQUEST, 9, b"hello", [{}]], 9, "method must be a string"),
        ([REQUEST, 9, "m", [{}, {}]], 9, "args must be [map]"),
        ([REQUEST, 9, "m", [[1]]], 9, "args must be [map]"),
        ([REQUEST, 9, "m", "x"], 9, "args must be [map]"),
        ([REQUEST, 9, "m", [{1: "int key"}]], 9, "string keys"),
        ([REQUEST, 9, "m"], 9, "4 items"),
        ([REQUEST, 9, "m", [{}], "extra"], 9, "4 items"),
        ([REQUEST], None, "4 items"),
        ([RESPONSE, 1, None], None, "a response is"),
        ([RESPONSE, -5, None, 1], None, "a response is"),
        ([NOTIFICATION, 5, [{}]], None, "a notification is"),
        ([NOTIFICATION, "m", 5], None, "a notification is"),
        ([3, 1, "m", [{}]], None, "unknown frame type"),
        ([False, 1, "m", [{}]], None, "unknown frame type"),
        ([], None, "msgpack array"),
        ({"not": "a list"}, None, "msgpack array"),
        (17, None, "msgpack array"),
    ],
)
def test_malformed_frames_get_the_right_violation(
    frame: Any, msgid: int | None, needle: str
) -> None:
    """Each malformed frame is a non-fatal bad_request, keeping the msgid when it is readable."""
    parser = FrameParser()
    events = parser.feed(packb(frame))
    assert len(events) == 1 and isinstance(events[0], Violation)
    violation = events[0]
    assert (violation.code, violation.msgid, violation.fatal) == ("bad_request", msgid, False)
    assert needle in violation.message
    assert not parser.dead


@pytest.mark.parametrize(
    ("raw_args", "expected"),
    [([], {}), ({"a": 1}, {"a": 1}), ([{"a": 1}], {"a": 1})],
)
def test_args_shapes_accepted(raw_args: Any, expected: dict[str, Any]) -> None:
    """Args may be [map], a bare map, or [] (no arguments)."""
    assert classify([REQUEST, 3, "m", raw_args], Limits()) == Request(3, "m", expected)


def test_msgid_bounds() -> None:
    """Msgids 0 and 2**32-1 are valid request ids."""
    for msgid in (0, MSGID_MAX):
        assert classify([REQUEST, msgid, "m", [{}]], Limits()) == Request(msgid, "m", {})


def test_response_error_that_is_not_a_map_is_wrapped() -> None:
    """A response whose error is not a map becomes an internal error map carrying its repr."""
    event = classify([RESPONSE, 4, "boom", None], Limits())
    assert event == Response(4, {"code": "internal", "message": "'boom'"}, None)


# -- encoders ---------------------------------------------------------------------------------
def test_error_map_shape() -> None:
    """error_map keeps code and message first and drops None extras."""
    wire = error_map("rate_limited", "slow down", retry_after=1.5, details=None)
    assert wire == {"code": "rate_limited", "message": "slow down", "retry_after": 1.5}
    assert list(wire) == ["code", "message", "retry_after"]
    assert error_map("internal", "x") == {"code": "internal", "message": "x"}


def test_encoder_shapes() -> None:
    """The encoders produce the CONTRACT frames of docs/protocol.md."""
    assert msgpack.unpackb(encode_request(1, "hello")) == [0, 1, "hello", [{}]]
    assert msgpack.unpackb(encode_request(2, "call", {"a": b"\x00"})) == [
        0,
        2,
        "call",
        [{"a": b"\x00"}],
    ]
    assert msgpack.unpackb(encode_response(3, None, {"ok": True})) == [1, 3, None, {"ok": True}]
    err = error_map("forbidden", "no")
    assert msgpack.unpackb(encode_response(4, err, None)) == [1, 4, err, None]
    assert msgpack.unpackb(encode_notification("protocol_error", err)) == [
        2,
        "protocol_error",
        [err],
    ]
    assert msgpack.unpackb(encode_notification("tick")) == [2, "tick", [{}]]


def test_encoders_reuse_a_small_packer_and_let_a_big_frame_go() -> None:
    """The encoders pack with the thread's reusable packer: a small frame allocates no fresh
    256 KiB buffer (msgpack.packb's), and a frame of megabytes does not stay in the packer's
    buffer once it is sent (the packer is renewed past RETAIN_LIMIT)."""
    encode_response(1, None, {"warm": True})
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for msgid in range(10):
            encode_response(msgid, None, {"status": 200, "body": b"{}"})
        assert tracemalloc.get_traced_memory()[1] - base < 16 * 1024
        frame = encode_response(2, None, {"body": b"x" * (4 * 1024 * 1024)})
        assert msgpack.unpackb(frame)[3]["body"] == b"x" * (4 * 1024 * 1024)
        del frame
        assert tracemalloc.get_traced_memory()[0] - base < 256 * 1024
    finally:
        tracemalloc.stop()


def test_binary_and_text_stay_distinct() -> None:
    """bin travels as bytes and str as str (use_bin_type on the way out, raw=False back)."""
    args = {"text": "é", "blob": b"\xff\x00"}
    assert FrameParser().feed(encode_request(1, "m", args)) == [Request(1, "m", args)]
