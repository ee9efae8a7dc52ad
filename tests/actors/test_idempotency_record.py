"""The idempotency record: its storage form, its keys, and what a known key's call gets."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.errors import (
    BadRequestRefusal,
    IdempotencyInDoubtRefusal,
    IdempotencyMismatchRefusal,
)
from claykiln.actors.idempotency_record import (
    BeginDecision,
    IdempotencyRecord,
    RecordState,
    check_key,
    decide_begin,
    expiry_key,
    intent_ops,
    record_ops,
    removal_ops,
    replay_body,
    split_expiry_key,
)
from claykiln.storage import Delete, Encoded, PreparedOp, Put, Store, pack, unpack

RECORD = IdempotencyRecord(
    key="order-17",
    state=RecordState.COMPLETED,
    operation="push_row",
    fingerprint="f" * 64,
    boot=3,
    started_at=1000.0,
    expires_at=1000.0 + 86400,
    sent={"method": "POST", "path": "/v3/sources/webhook/w1"},
    completed_at=1000.5,
    result={"status": 200, "headers": {}, "body": {"status": "ok"}, "attempts": 1},
)


def test_a_record_survives_its_storage_form() -> None:
    """to_value then from_value gives the same record, for every state."""
    for state in RecordState:
        record = attrs.evolve(
            RECORD, state=state, doubt="why" if state.value == "in_doubt" else None
        )
        assert IdempotencyRecord.from_value(record.key, record.to_value()) == record


@pytest.mark.parametrize("keyed", [False, True])
def test_a_completed_record_keeps_its_replay_packed(keyed: bool) -> None:
    """The stored answer is the replay's msgpack map (the result, ``replayed``, the key), and
    the result reads back exactly as it was, whether or not it carried the key itself."""
    result = dict(RECORD.result or {})
    if keyed:
        result["idempotency_key"] = RECORD.key
    record = attrs.evolve(RECORD, result=result)
    value = unpack(pack(record.to_value()))  # what the store gives back
    body = replay_body(value)
    assert body is not None
    assert unpack(body) == {**result, "replayed": True, "idempotency_key": RECORD.key}
    assert IdempotencyRecord.from_value(record.key, value) == record


def test_a_record_of_the_layout_before_packed_answers_reads_the_same() -> None:
    """A record holding its result as a plain map (no packed answer) still reads whole."""
    value = RECORD.to_value()
    for name in ("answer", "answer_crc", "key_added"):
        value.pop(name, None)
    value["result"] = dict(RECORD.result or {})
    assert replay_body(value) is None
    assert IdempotencyRecord.from_value(RECORD.key, value) == RECORD


@pytest.mark.parametrize("damage", ["flip", "truncate", "crc", "no_crc", "not_bytes"])
def test_a_damaged_packed_answer_is_never_replayed(damage: str) -> None:
    """An answer whose bytes no longer match their CRC-32 is not sent (it could break the
    caller's stream) and the record reads as malformed (absent)."""
    value = RECORD.to_value()
    answer = value["answer"]
    if damage == "flip":
        value["answer"] = answer[:5] + bytes([answer[5] ^ 0x01]) + answer[6:]
    elif damage == "truncate":
        value["answer"] = answer[:-3]
    elif damage == "crc":
        value["answer_crc"] ^= 1
    elif damage == "no_crc":
        del value["answer_crc"]
    else:
        value["answer"] = unpack(answer)
    assert replay_body(value) is None
    assert IdempotencyRecord.from_value(RECORD.key, value) is None


@pytest.mark.parametrize("value", [None, [], {"state": "bogus"}, {"state": "completed"}])
def test_a_malformed_record_reads_as_absent(value: object) -> None:
    """Anything that is not a whole record is None, never an exception."""
    assert IdempotencyRecord.from_value("k", value) is None


@pytest.mark.parametrize("key", ["a", "x" * 255, "order 17/2026-11-28T10:00:00Z", "~!"])
def test_printable_ascii_keys_are_accepted(key: str) -> None:
    """1-255 printable ASCII characters."""
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "a\nb", "tab\there", 17, None])
def test_other_keys_are_a_bad_request(key: object) -> None:
    """Empty, too long, non-ASCII, control characters, not a string: bad_request."""
    with pytest.raises(BadRequestRefusal, match="printable ASCII"):
        check_key(key)


@given(st.floats(0, 4e9), st.floats(0, 4e9))
def test_expiry_keys_sort_by_time(a: float, b: float) -> None:
    """Byte order of the expiry index is time order (to the microsecond)."""
    ka, kb = expiry_key(a, "k1"), expiry_key(b, "k0")
    if int(a * 1e6) < int(b * 1e6):
        assert ka < kb
    assert split_expiry_key(ka) == (int(a * 1_000_000), "k1")


def test_an_intent_is_one_put_and_its_outcome_moves_it() -> None:
    """The intent: one put in the in-flight table. The outcome: the record, its expiry entry
    (the replaced record's deleted when it differs), the intent deleted. Removal: the record
    and its expiry entry, and the intent only when asked (forget)."""
    intent = attrs.evolve(RECORD, state=RecordState.IN_FLIGHT, result=None, completed_at=None)
    assert intent_ops(intent) == Encoded(
        (PreparedOp("idempotency_inflight", b"order-17", pack(intent.to_value())),)
    )
    ops = record_ops(RECORD, previous_expiry=500.0).ops
    assert ops == (
        PreparedOp("idempotency", b"order-17", pack(RECORD.to_value())),
        PreparedOp("idempotency_expiry", expiry_key(500.0, "order-17"), None),
        PreparedOp("idempotency_expiry", expiry_key(RECORD.expires_at, "order-17"), pack(b"")),
        PreparedOp("idempotency_inflight", b"order-17", None),
    )
    same = record_ops(RECORD, previous_expiry=RECORD.expires_at).ops
    assert [op.table for op in same if op.value is None] == ["idempotency_inflight"]


def test_encoded_ops_are_what_the_store_would_prepare(store: Store) -> None:
    """The intent and the outcome encode themselves (the writer queues them as they are):
    the same bytes ``Store.prepare`` makes of the same ops, for the longest key there is."""
    key = "k" * 255
    record = attrs.evolve(RECORD, key=key)
    intent = attrs.evolve(record, state=RecordState.IN_FLIGHT, result=None, completed_at=None)
    skey = key.encode("ascii")
    assert intent_ops(intent).ops == store.prepare(
        [Put("idempotency_inflight", skey, intent.to_value())]
    )
    assert record_ops(record, previous_expiry=500.0).ops == store.prepare(
        [
            Put("idempotency", skey, record.to_value()),
            Delete("idempotency_expiry", expiry_key(500.0, key)),
            Put("idempotency_expiry", expiry_key(record.expires_at, key), b""),
            Delete("idempotency_inflight", skey),
        ]
    )
    assert removal_ops("order-17", 10.0) == [
        Delete("idempotency", b"order-17"),
        Delete("idempotency_expiry", expiry_key(10.0, "order-17")),
    ]
    assert Delete("idempotency_inflight", b"order-17") in removal_ops("order-17", None, intent=True)


NOW = 2000.0


def test_no_record_or_an_expired_one_leads() -> None:
    """Nothing stored, or a record past its retention: the call runs."""
    assert decide_begin(None, "f" * 64, repeatable=False, now=NOW) is BeginDecision.LEAD
    expired = attrs.evolve(RECORD, expires_at=NOW)
    assert decide_begin(expired, "0" * 64, repeatable=False, now=NOW) is BeginDecision.LEAD


def test_a_completed_key_replays() -> None:
    """Same fingerprint, completed: the stored answer."""
    assert decide_begin(RECORD, "f" * 64, repeatable=False, now=NOW) is BeginDecision.REPLAY


def test_another_fingerprint_is_a_mismatch_naming_both() -> None:
    """The key was used for another request: idempotency_mismatch with both fingerprints."""
    with pytest.raises(IdempotencyMismatchRefusal) as info:
        decide_begin(RECORD, "0" * 64, repeatable=True, now=NOW)
    assert info.value.details == {
        "key": "order-17",
        "fingerprint": "f" * 64,
        "request_fingerprint": "0" * 64,
    }


@pytest.mark.parametrize("state", [RecordState.IN_DOUBT, RecordState.IN_FLIGHT])
def test_a_key_in_doubt_runs_again_only_when_repeatable(state: RecordState) -> None:
    """In doubt (or in flight with nobody running it): repeatable leads, else the app decides."""
    doubtful = attrs.evolve(RECORD, state=state, result=None, doubt="the daemon stopped")
    assert decide_begin(doubtful, "f" * 64, repeatable=True, now=NOW) is BeginDecision.LEAD
    with pytest.raises(IdempotencyInDoubtRefusal) as info:
        decide_begin(doubtful, "f" * 64, repeatable=False, now=NOW)
    details = info.value.details or {}
    assert details["started_at"] == 1000.0
    assert details["sent"] == {"method": "POST", "path": "/v3/sources/webhook/w1"}
    assert details["reason"] == "the daemon stopped"
    assert "POST /v3/sources/webhook/w1" in info.value.message
