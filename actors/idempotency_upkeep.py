"""The idempotency store's housekeeping: what start-up finds in flight, and the sweeper.

Both run in the idempotency actor's task (actors/idempotency.py) and write through the storage
writer, awaited:

- ``convert_in_flight``: every intent left in flight by an earlier boot (the in-flight index,
  never a scan of the records) becomes an ``in_doubt`` record, in one write, replacing the
  record its call was re-running if any; one ``idempotency.in_doubt`` alert names them.
- ``sweep_once``: up to one batch of expired records (the expiry index, oldest first) are
  deleted in one write, skipping keys in flight; a failed write is logged
  (``idempotency.sweep_failed``) and tried again at the next interval.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Final

import attrs

from claykiln.actors.idempotency_record import (
    EXPIRY_TABLE,
    INFLIGHT_TABLE,
    RECORD_TABLE,
    IdempotencyRecord,
    RecordState,
    record_ops,
    removal_ops,
    split_expiry_key,
    storage_key,
)
from claykiln.actors.log import alert, get_logger
from claykiln.actors.writer import Writer
from claykiln.storage import Delete, Encoded, Op, PreparedOp, StorageError, Store

__all__ = ["IN_DOUBT_SAMPLE", "SweepResult", "convert_in_flight", "read_record", "sweep_once"]

IN_DOUBT_SAMPLE: Final = 20  # keys named in the start-up alert (the count is exact)

log = get_logger("claykiln.idempotency")


def read_record(store: Store, table: str, key: str) -> IdempotencyRecord | None:
    """The record of ``key`` in ``table`` (None if absent; a malformed one is logged and
    read as absent)."""
    value = store.get(table, storage_key(key))
    return None if value is None else decode_record(key, value, table)


def decode_record(key: str, value: object, table: str) -> IdempotencyRecord | None:
    """``IdempotencyRecord.from_value``, logging a value that is not a record."""
    record = IdempotencyRecord.from_value(key, value)
    if record is None:
        log.warning("idempotency.malformed_record", key=key, table=table)
    return record


async def convert_in_flight(store: Store, writer: Writer, boot: int) -> int:
    """Start-up: intents left in flight by an earlier boot become in-doubt records (one write).
    Returns how many; raises what ``Writer.write`` raises."""
    entries = store.items(INFLIGHT_TABLE)
    if not entries:
        return 0
    ops: list[PreparedOp] = []
    keys: list[str] = []
    for raw_key, value in entries:
        key = raw_key.decode("ascii", "replace")
        intent = decode_record(key, value, INFLIGHT_TABLE)
        if intent is None:
            ops.append(PreparedOp(INFLIGHT_TABLE, raw_key, None))  # a key that is in storage
            continue
        old = read_record(store, RECORD_TABLE, key)
        doubt = f"the daemon stopped (boot {intent.boot}) before the answer was stored"
        record = attrs.evolve(intent, state=RecordState.IN_DOUBT, doubt=doubt)
        ops.extend(record_ops(record, previous_expiry=old.expires_at if old else None).ops)
        keys.append(key)
    await writer.write(Encoded(tuple(ops)))
    if keys:
        alert(
            log,
            "idempotency.in_doubt",
            severity="warning",
            count=len(keys),
            keys=keys[:IN_DOUBT_SAMPLE],
            boot=boot,
        )
    return len(keys)


@attrs.frozen
class SweepResult:
    """One sweep: records removed, whether a write was made, whether the batch was full (the
    next one follows at once)."""

    removed: int = 0
    wrote: bool = False
    full: bool = False


async def sweep_once(
    store: Store, writer: Writer, now: Callable[[], float], in_flight: Container[str], batch: int
) -> SweepResult:
    """Delete up to ``batch`` expired records (see the module docstring)."""
    now_us = int(now() * 1_000_000)
    entries = store.items(EXPIRY_TABLE, limit=batch)
    ops: list[Op] = []
    removed = 0
    for raw, _ in entries:
        expires_us, key = split_expiry_key(raw)
        if expires_us > now_us:
            break
        if key in in_flight:
            continue
        record = read_record(store, RECORD_TABLE, key)
        if record is not None and int(record.expires_at * 1_000_000) == expires_us:
            ops.extend(removal_ops(key, None))
            removed += 1
        ops.append(Delete(EXPIRY_TABLE, raw))
    if not ops:
        return SweepResult()
    try:
        await writer.write(ops)
    except StorageError as exc:
        log.warning("idempotency.sweep_failed", error=str(exc))
        return SweepResult(wrote=True)
    log.debug("idempotency.swept", records=removed, entries=len(ops))
    return SweepResult(removed, wrote=True, full=len(entries) >= batch)
