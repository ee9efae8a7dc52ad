"""The sans-I/O call ledger and the timeouts shared by the three client flavors."""

from __future__ import annotations

import itertools
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claykiln.daemon import ConnectionLost, KilnError, ProtocolViolation, RateLimited
from claykiln.daemon.client._core import (
    CALL_TIMEOUT_MARGIN,
    MSGID_MODULUS,
    CallLedger,
    PendingCall,
    call_timeout,
    resolve_timeout,
)
from claykiln.daemon.rpc.protocol import encode_notification, encode_response


def _start(ledger: CallLedger, method: str = "m") -> tuple[PendingCall, list[int]]:
    woken: list[int] = []
    call, _frame = ledger.start(method, None, lambda: woken.append(1))
    return call, woken


def test_request_frame_is_msgpack_rpc() -> None:
    """start() encodes [0, msgid, method, [args]] with the allocated msgid."""
    ledger = CallLedger(first_msgid=7)
    call, frame = ledger.start("hello", {"a": 1}, lambda: None)
    assert msgpack.unpackb(frame) == [0, 7, "hello", [{"a": 1}]]
    assert call.msgid == 7
    assert ledger.in_flight == 1


def test_msgids_wrap_at_2_32() -> None:
    """Msgids count up and wrap from 2**32-1 to 0."""
    ledger = CallLedger(first_msgid=MSGID_MODULUS - 2)
    ids = [_start(ledger)[0].msgid for _ in range(3)]
    assert ids == [MSGID_MODULUS - 2, MSGID_MODULUS - 1, 0]


def test_msgid_allocation_skips_ids_awaiting_a_reply() -> None:
    """After a wrap, ids still in flight or abandoned are never reused."""
    ledger = CallLedger(first_msgid=MSGID_MODULUS - 1)
    waiting, _ = _start(ledger)  # 2**32-1
    zero, _ = _start(ledger)  # 0
    one, _ = _start(ledger)  # 1
    ledger.abandon(zero)
    ledger.receive(encode_response(one.msgid, None, "ok"))
    ledger._next = MSGID_MODULUS - 1  # force the counter back onto the reserved ids
    assert _start(ledger)[0].msgid == 1  # skips 2**32-1 (waiting) and 0 (abandoned)
    assert waiting.msgid == MSGID_MODULUS - 1


def test_reply_resolves_its_call_and_wakes_it_once() -> None:
    """A response resolves exactly the call with its msgid; errors map to KilnError classes."""
    ledger = CallLedger()
    first, woke_first = _start(ledger)
    second, woke_second = _start(ledger)
    wire = {"code": "rate_limited", "message": "slow down", "retry_after": 2}
    ledger.receive(encode_response(second.msgid, wire, None))
    assert (first.done, woke_first) == (False, [])
    assert second.done and woke_second == [1]
    with pytest.raises(RateLimited) as info:
        second.outcome()
    assert info.value.retry_after == 2.0
    ledger.receive(encode_response(first.msgid, None, {"x": 1}))
    assert first.outcome() == {"x": 1}
    assert ledger.in_flight == 0


def test_late_reply_of_abandoned_call_is_dropped() -> None:
    """An abandoned call keeps its msgid reserved until its late reply, which is discarded."""
    ledger = CallLedger()
    call, woken = _start(ledger)
    ledger.abandon(call)
    assert call.abandoned and ledger.abandoned == 1 and ledger.in_flight == 1
    ledger.receive(encode_response(call.msgid, None, "late"))
    assert woken == [] and call.result is None
    assert ledger.in_flight == 0 and ledger.failure is None


def test_reply_for_unknown_msgid_is_ignored() -> None:
    """A response nobody waits for changes nothing."""
    ledger = CallLedger()
    call, _ = _start(ledger)
    ledger.receive(encode_response(call.msgid + 100, None, "stray"))
    assert not call.done and ledger.failure is None


def test_protocol_error_notification_fails_every_call() -> None:
    """protocol_error fails all calls in flight with ProtocolViolation carrying its code."""
    ledger = CallLedger()
    calls = [_start(ledger)[0] for _ in range(3)]
    note = {"code": "frame_too_large", "message": "frame exceeds the limit"}
    notes = ledger.receive(encode_notification("protocol_error", note))
    assert [(n.method, n.args) for n in notes] == [("protocol_error", note)]
    errors = []
    for call in calls:
        with pytest.raises(ProtocolViolation) as info:
            call.outcome()
        errors.append(info.value)
        assert info.value.code == "frame_too_large"
        assert "frame exceeds the limit" in info.value.message
    assert len({id(e) for e in errors}) == 3  # a fresh exception per waiter
    assert isinstance(ledger.failure, ProtocolViolation)
    with pytest.raises(ConnectionLost):
        ledger.start("again", None, lambda: None)


def test_other_notifications_are_returned_without_side_effects() -> None:
    """A notification other than protocol_error is handed back and fails nothing."""
    ledger = CallLedger()
    call, _ = _start(ledger)
    notes = ledger.receive(encode_notification("breaker.opened", {"key": "clay"}))
    assert [(n.method, n.args) for n in notes] == [("breaker.opened", {"key": "clay"})]
    assert not call.done and ledger.failure is None


def test_undecodable_bytes_fail_the_ledger() -> None:
    """Bytes that are not msgpack fail the calls in flight; later bytes are ignored."""
    ledger = CallLedger()
    call, _ = _start(ledger)
    ledger.receive(b"\xc1")
    with pytest.raises(ProtocolViolation):
        call.outcome()
    assert ledger.receive(encode_response(call.msgid, None, 1)) == []


def test_fail_all_keeps_the_first_failure() -> None:
    """fail_all resolves waiters once and keeps the first reason."""
    ledger = CallLedger()
    _call, woken = _start(ledger)
    ledger.fail_all(lambda: ConnectionLost("first"))
    ledger.fail_all(lambda: ConnectionLost("second"))
    assert woken == [1]
    assert ledger.failure is not None and ledger.failure.message == "first"


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(list(range(20))),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
def test_any_chunking_and_order_resolves_every_call(order: list[int], cuts: list[int]) -> None:
    """However replies are ordered and split into reads, each call gets its own result."""
    ledger = CallLedger()
    calls = [_start(ledger, f"m{i}")[0] for i in range(20)]
    stream = b"".join(encode_response(calls[i].msgid, None, {"i": i}) for i in order)
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(bounds):
        ledger.receive(stream[start:end])
    assert [call.outcome() for call in calls] == [{"i": i} for i in range(20)]
    assert ledger.in_flight == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_hostile_bytes_never_raise(data: bytes) -> None:
    """Arbitrary bytes from the socket never raise out of receive(); calls end or keep waiting."""
    ledger = CallLedger()
    call, _ = _start(ledger)
    ledger.receive(data)
    if call.done:
        with pytest.raises(KilnError):
            call.outcome()
        assert ledger.failure is not None


def test_timeouts() -> None:
    """The call timeout is explicit, else deadline + margin, else the client default."""
    assert call_timeout(None, None, 30.0) == 30.0
    assert call_timeout(None, 2500, 30.0) == 2.5 + CALL_TIMEOUT_MARGIN
    assert call_timeout(4.0, 2500, 30.0) == 4.0
    assert resolve_timeout(math.inf, 1.0) == math.inf
    for bad in (0, -1, math.nan):
        with pytest.raises(ValueError, match="positive"):
            resolve_timeout(bad, 1.0)
