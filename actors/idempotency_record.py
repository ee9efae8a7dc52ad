"""The idempotency record, its storage layout, and what a second call with a known key gets.

Sans-I/O: values, encodings and the one decision ``decide_begin``. The actor
(actors/idempotency.py) owns the records; this is what it decides with.

Storage (LMDB tables, keys as bytes):

    idempotency           key -> a completed or in-doubt record (map below)
    idempotency_expiry    uint64 expires_at in microseconds + key -> b""   (the sweeper's order)
    idempotency_inflight  key -> the intent of a call running now        (what start converts)

A call's life under a key: its intent (state ``in_flight``) is put in ``idempotency_inflight``,
durably, before a byte goes upstream (one put); the outcome moves it to ``idempotency`` as
``completed`` (a final answer, durable before the caller gets it) or ``in_doubt`` (it may have
reached the upstream and nobody knows the answer: the call timed out after sending, or the
daemon died, and the next start converts what it finds in flight), or deletes it (a failure
that was never sent, or that a retry may simply repeat: a record it re-ran stays as it was).
Every record expires ``retention`` seconds after its call started.

A completed record keeps its answer packed, as a replay sends it (``answer``: the msgpack map
of the result with ``replayed: true`` and the key; ``answer_crc``, its CRC-32; ``key_added``
when the result itself had no ``idempotency_key``, so it reads back as it was): a replay
frames those bytes without decoding or packing the result (``replay_body``), and a damaged copy
is never sent. Records written before that layout kept the result as a plain map (``result``);
they are read the same way.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping
from typing import Any, Final

import attrs

from claykiln.actors.errors import (
    BadRequestRefusal,
    IdempotencyInDoubtRefusal,
    IdempotencyMismatchRefusal,
)
from claykiln.storage import (
    Delete,
    Encoded,
    Op,
    PreparedOp,
    join_key,
    pack,
    uint_key,
    unpack,
)

__all__ = [
    "COMPLETED",
    "EXPIRY_TABLE",
    "INFLIGHT_TABLE",
    "RECORD_TABLE",
    "BeginDecision",
    "IdempotencyRecord",
    "RecordState",
    "check_key",
    "decide_begin",
    "expiry_key",
    "in_doubt_refusal",
    "intent_ops",
    "mismatch_refusal",
    "record_ops",
    "removal_ops",
    "replay_body",
    "split_expiry_key",
    "storage_key",
]

RECORD_TABLE: Final = "idempotency"
EXPIRY_TABLE: Final = "idempotency_expiry"
INFLIGHT_TABLE: Final = "idempotency_inflight"
_MICROS: Final = 1_000_000
_EMPTY: Final = pack(b"")  # an expiry entry's value


class RecordState(enum.Enum):
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"
    IN_DOUBT = "in_doubt"


COMPLETED: Final = RecordState.COMPLETED.value
"""A completed record's stored ``state`` (an enum member's ``.value`` costs a lookup each)."""


class BeginDecision(enum.Enum):
    """What ``decide_begin`` tells the actor to do with a ``begin``."""

    LEAD = "lead"  # run the call; the caller must finish it
    FOLLOW = "follow"  # the same call is running: wait for its answer
    REPLAY = "replay"  # answer with the stored result


def check_key(key: object) -> str:
    """A caller's key: 1-255 printable ASCII characters (the header an upstream gets, too).

    Raises BadRequestRefusal otherwise."""
    # ASCII and printable is exactly " " .. "~" (isprintable alone would admit non-ASCII).
    if isinstance(key, str) and 0 < len(key) <= 255 and key.isascii() and key.isprintable():
        return key
    msg = (
        "call: idempotency_key must be a string of 1-255 printable ASCII characters "
        "(it is also sent as an HTTP header), e.g. a UUID"
    )
    raise BadRequestRefusal(msg)


def storage_key(key: str) -> bytes:
    return key.encode("ascii")


def expiry_key(expires_at: float, key: str) -> bytes:
    """The sweeper's index key: expiry in microseconds (big-endian, so byte order is time
    order), NUL, the key."""
    return join_key(uint_key(max(0, int(expires_at * _MICROS))), storage_key(key))


def split_expiry_key(raw: bytes) -> tuple[int, str]:
    """(expiry in microseconds, key) from an ``expiry_key``."""
    return int.from_bytes(raw[:8], "big"), raw[9:].decode("ascii", "replace")


@attrs.frozen
class IdempotencyRecord:
    """One key's record. Times are wall-clock seconds (they outlive the process).

    ``sent`` says what was (or was about to be) sent upstream: ``{"method", "path"}`` and, for a
    stamped row, ``"key_field"``. ``result`` is the wire result of a completed call (stored as
    its replay, see the module docstring). ``doubt`` says why a record is in doubt.
    """

    key: str
    state: RecordState
    operation: str
    fingerprint: str
    boot: int
    started_at: float
    expires_at: float
    sent: Mapping[str, Any] = attrs.field(factory=dict)
    completed_at: float | None = None
    result: Mapping[str, Any] | None = None
    doubt: str | None = None

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def completed(self, at: float, result: Mapping[str, Any]) -> IdempotencyRecord:
        """This intent's record once its call completed at ``at`` with ``result`` (what
        ``attrs.evolve`` makes, built directly: it is on every keyed call's path)."""
        return IdempotencyRecord(
            self.key,
            RecordState.COMPLETED,
            self.operation,
            self.fingerprint,
            self.boot,
            self.started_at,
            self.expires_at,
            self.sent,
            at,
            result,
        )

    def to_value(self) -> dict[str, Any]:
        """The msgpack map stored under the key."""
        out: dict[str, Any] = {
            "state": self.state.value,
            "op": self.operation,
            "fp": self.fingerprint,
            "boot": self.boot,
            "started": self.started_at,
            "expires": self.expires_at,
            "sent": dict(self.sent),
        }
        if self.completed_at is not None:
            out["completed"] = self.completed_at
        if self.result is not None:
            answer = pack({**self.result, "replayed": True, "idempotency_key": self.key})
            out["answer"] = answer
            out["answer_crc"] = zlib.crc32(answer)
            if "idempotency_key" not in self.result:
                out["key_added"] = True  # the replay's, not the result's: read back without
        if self.doubt is not None:
            out["doubt"] = self.doubt
        return out

    @classmethod
    def from_value(cls, key: str, value: Any) -> IdempotencyRecord | None:
        """The record stored under ``key``, or None for a value that is not one (logged by the
        caller; a malformed record is treated as absent rather than crashing a request)."""
        if not isinstance(value, Mapping):
            return None
        try:
            result = _stored_result(value)
            return cls(
                key=key,
                state=RecordState(value["state"]),
                operation=str(value["op"]),
                fingerprint=str(value["fp"]),
                boot=int(value["boot"]),
                started_at=float(value["started"]),
                expires_at=float(value["expires"]),
                sent=dict(value.get("sent") or {}),
                completed_at=value.get("completed"),
                result=result,
                doubt=value.get("doubt"),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def to_wire(self) -> dict[str, Any]:
        """What ``idempotency.get`` answers: every field, the stored result included."""
        return {
            "key": self.key,
            "state": self.state.value,
            "operation": self.operation,
            "fingerprint": self.fingerprint,
            "boot": self.boot,
            "started_at": self.started_at,
            "expires_at": self.expires_at,
            "completed_at": self.completed_at,
            "sent": dict(self.sent),
            "doubt": self.doubt,
            "result": dict(self.result) if self.result is not None else None,
        }


def replay_body(value: Mapping[str, Any]) -> bytes | None:
    """The packed replay answer of a stored record map (what ``to_value`` wrote), or None: no
    packed answer (an intent, a record in doubt, the layout before packed answers) or a damaged
    one (its CRC-32 differs: sending it could break the caller's stream)."""
    answer = value.get("answer")
    if type(answer) is not bytes or zlib.crc32(answer) != value.get("answer_crc"):
        return None
    return answer


def _stored_result(value: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result a stored record map holds: its packed answer without the replay marker, or
    the plain map of the layout before packed answers; None for none. Raises ValueError for a
    damaged answer (the record is malformed)."""
    if "answer" in value:
        body = replay_body(value)
        try:
            answer = None if body is None else unpack(body)
        except Exception as exc:  # msgpack raises several kinds for bad bytes
            raise ValueError("a damaged stored answer") from exc
        if not isinstance(answer, dict):
            raise ValueError("a damaged stored answer")
        answer.pop("replayed", None)
        if value.get("key_added"):
            answer.pop("idempotency_key", None)
        return answer
    result = value.get("result")
    return dict(result) if isinstance(result, Mapping) else None


def intent_ops(intent: IdempotencyRecord) -> Encoded:
    """Write the intent of a call (state ``in_flight``): one put in the in-flight table.

    Encoded here, not by the writer's ``Store.prepare``: every keyed call writes an intent
    and an outcome, and the generic checks cost it ~3 us of the loop (docs/performance.md).
    What they would check holds by construction: the tables are ours, and a key is 1-255
    ASCII characters (``check_key``, or a derived hex digest), so a storage key is at most 255
    bytes and an expiry key 264, under LMDB's 511."""
    return Encoded((PreparedOp(INFLIGHT_TABLE, storage_key(intent.key), pack(intent.to_value())),))


def record_ops(record: IdempotencyRecord, *, previous_expiry: float | None = None) -> Encoded:
    """Write a completed or in-doubt ``record``, its expiry entry (``previous_expiry``: the one
    of the record it replaces, deleted when it differs), and end its intent. Encoded here, as
    ``intent_ops``."""
    key = record.key
    skey = storage_key(key)
    ops = [PreparedOp(RECORD_TABLE, skey, pack(record.to_value()))]
    if previous_expiry is not None and previous_expiry != record.expires_at:
        ops.append(PreparedOp(EXPIRY_TABLE, expiry_key(previous_expiry, key), None))
    ops.append(PreparedOp(EXPIRY_TABLE, expiry_key(record.expires_at, key), _EMPTY))
    ops.append(PreparedOp(INFLIGHT_TABLE, skey, None))
    return Encoded(tuple(ops))


def removal_ops(key: str, expires_at: float | None, *, intent: bool = False) -> list[Op]:
    """Delete the record of ``key`` and its expiry entry (``expires_at`` None: none known),
    and with ``intent`` an intent left in flight too (what ``forget`` deletes)."""
    skey = storage_key(key)
    ops: list[Op] = [Delete(RECORD_TABLE, skey)]
    if intent:
        ops.append(Delete(INFLIGHT_TABLE, skey))
    if expires_at is not None:
        ops.append(Delete(EXPIRY_TABLE, expiry_key(expires_at, key)))
    return ops


def mismatch_refusal(key: str, stored: str, requested: str) -> IdempotencyMismatchRefusal:
    msg = (
        f"idempotency key {key!r} was used for another request (fingerprint {stored[:16]}...) "
        f"than this one ({requested[:16]}...); use a new key for a new request"
    )
    details = {"key": key, "fingerprint": stored, "request_fingerprint": requested}
    return IdempotencyMismatchRefusal(msg, details=details)


def in_doubt_refusal(record: IdempotencyRecord) -> IdempotencyInDoubtRefusal:
    """The refusal of a key in doubt on an operation that is not safe to repeat: what is known,
    so the app can check the upstream and decide (a new key runs again; ``kiln idempotency
    forget`` clears this one)."""
    sent = record.sent
    msg = (
        f"idempotency key {record.key!r}: the earlier {record.operation} call "
        f"({sent.get('method', '?')} {sent.get('path', '?')}) may have reached the upstream, "
        f"and its answer is unknown ({record.doubt or 'in doubt'}); running it again could do "
        "it twice: check the upstream, then retry with a new key or forget this one"
    )
    details = {
        "key": record.key,
        "operation": record.operation,
        "started_at": record.started_at,
        "boot": record.boot,
        "sent": dict(sent),
        "reason": record.doubt,
        "fingerprint": record.fingerprint,
    }
    return IdempotencyInDoubtRefusal(msg, details=details)


def decide_begin(
    record: IdempotencyRecord | None,
    fp: str,
    *,
    repeatable: bool,
    now: float,
) -> BeginDecision:
    """What a call with a key gets, from the key's stored record, when no call with the key is
    running in this process (a running one is followed, or refused on a fingerprint mismatch,
    before this is asked).

    No record, or an expired one: LEAD. Another fingerprint: raise the mismatch. Completed:
    REPLAY. In doubt (or in flight with nobody running it: its end was never written): LEAD
    when the operation is safe to repeat, else raise ``idempotency_in_doubt``.
    """
    if record is None or record.expired(now):
        return BeginDecision.LEAD
    if record.fingerprint != fp:
        raise mismatch_refusal(record.key, record.fingerprint, fp)
    if record.state is RecordState.COMPLETED:
        return BeginDecision.REPLAY
    if repeatable:
        return BeginDecision.LEAD
    raise in_doubt_refusal(record)
