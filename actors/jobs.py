"""The outbox's job record, its states and its storage layout: values and pure functions.

A job is one ``submit`` kept until it reaches the upstream or an operator acts on it. Its life:

    pending --(picked)--> in_flight --(2xx)--------------------------------> done
       ^                     |  \\--(retryable failure, attempts left)----> retry_wait --+
       |                     |   \\-(refused before a byte left: deferred)-> pending or   |
       |                     |                                              retry_wait   |
       |                     +--(final 4xx, attempts spent, in doubt, quota)--> dead     |
       +-------------------------------(picked again when due)----------------------------+

``in_doubt`` is not a stored state: a job found ``in_flight`` at start-up was interrupted by a
crash; it runs again where the operation is safe to repeat (or stamps a ``key_field``), else it
is dead with reason ``in_doubt``. ``dead`` jobs are the dead-letter queue; an operator's retry
makes one ``pending`` again (keeping its idempotency key), a purge deletes it.

Storage (LMDB tables; keys are bytes, values msgpack). Every job has exactly one index entry,
the one its state names, so the scheduler never scans the records:

    jobs            job id -> the record (``Job.to_value``)
    jobs_due        queue NUL due_us id -> b""   pending jobs, by queue then due time
    jobs_retry      queue NUL due_us id -> b""   retry_wait jobs, the same layout
    jobs_inflight   job id -> boot count          in flight (what start-up turns in doubt)
    jobs_dead       dead_us id -> b""             the dead-letter queue, oldest first
    jobs_done       done_us id -> b""             finished jobs, swept after the retention
    jobs_keys       idempotency key -> job id     a second submit with the key finds the job

A job's ``queue`` is the webhook source it pushes to (operations with Clay's webhook rules: the
lifetime cap is per source, and a capped source holds only its own jobs) or else its operation's
name. Times are wall-clock seconds (they outlive the process); index keys carry microseconds,
big-endian, so byte order is time order.
"""

from __future__ import annotations

import enum
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from claykiln.storage import Delete, Op, Put, uint_key

__all__ = [
    "DEAD_TABLE",
    "DONE_TABLE",
    "DUE_TABLE",
    "HISTORY_KEPT",
    "INFLIGHT_TABLE",
    "JOB_TABLE",
    "KEY_TABLE",
    "RETRY_TABLE",
    "WAITING_TABLES",
    "Attempt",
    "Job",
    "JobState",
    "batch_ids",
    "due_key",
    "index_entry",
    "micros",
    "new_job_id",
    "queue_prefix",
    "removal_ops",
    "split_due_key",
    "split_time_key",
    "time_key",
    "transition_ops",
]

JOB_TABLE: Final = "jobs"
DUE_TABLE: Final = "jobs_due"
RETRY_TABLE: Final = "jobs_retry"
INFLIGHT_TABLE: Final = "jobs_inflight"
DEAD_TABLE: Final = "jobs_dead"
DONE_TABLE: Final = "jobs_done"
KEY_TABLE: Final = "jobs_keys"
WAITING_TABLES: Final = (DUE_TABLE, RETRY_TABLE)
HISTORY_KEPT: Final = 32
"""Attempt entries a job keeps (the oldest are dropped first; ``attempts`` stays exact)."""
_MICROS: Final = 1_000_000
_ids = random.Random(os.urandom(32))
_SEP: Final = b"\x00"


class JobState(enum.Enum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    RETRY_WAIT = "retry_wait"
    DONE = "done"
    DEAD = "dead"


def micros(seconds: float) -> int:
    """Wall-clock seconds as the whole microseconds index keys carry (never negative)."""
    return max(0, int(seconds * _MICROS))


def new_job_id(now: float | None = None) -> str:
    """A fresh job id: 12 hex digits of milliseconds, then 20 random ones (32 in all), so ids
    sort by creation time and never repeat. The random part comes from a generator seeded
    from the OS once (ids need to be unique, not secret), so making one is no system call."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms & 0xFFFF_FFFF_FFFF:012x}{_ids.getrandbits(80):020x}"


@attrs.frozen
class Attempt:
    """One entry of a job's history: an attempt, a deferral (``burned`` False: it did not
    count against ``max_attempts``) or an operator's act. ``outcome`` is ``"status 503"``, an
    error code such as ``"timeout"``, ``"in_doubt"``, ``"retried"`` or ``"killed"``."""

    at: float
    outcome: str
    burned: bool = False
    error: str | None = None
    duration_ms: float | None = None

    def to_value(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at, "outcome": self.outcome, "burned": self.burned}
        if self.error is not None:
            out["error"] = self.error
        if self.duration_ms is not None:
            out["duration_ms"] = round(self.duration_ms, 3)
        return out

    @classmethod
    def from_value(cls, value: Any) -> Attempt:
        return cls(
            at=float(value["at"]),
            outcome=str(value["outcome"]),
            burned=bool(value.get("burned", False)),
            error=value.get("error"),
            duration_ms=value.get("duration_ms"),
        )


@attrs.frozen
class Job:
    """One job. ``request`` is the ``submit``'s call arguments as the wire has them
    (``path_params``, ``query``, ``json`` or ``body``, ``headers``, ``lane``, ``deadline_ms``),
    the idempotency key stamped into the row where the operation says so. ``key``: the job's
    idempotency key (given, derived, or ``job:<id>``); ``indexed``: whether ``jobs_keys`` maps
    it here. ``attempts`` counts burned attempts only; ``deferrals`` the attempts in a row that
    were refused before a byte left (they back off too). ``boot``: the boot that took it in
    flight."""

    id: str
    operation: str
    request: Mapping[str, Any]
    key: str
    fingerprint: str
    queue: str
    state: JobState
    created_at: float
    due_at: float
    max_attempts: int
    source: str | None = None
    indexed: bool = False
    attempts: int = 0
    deferrals: int = 0
    boot: int | None = None
    history: tuple[Attempt, ...] = ()
    reason: str | None = None
    error: str | None = None
    dead_at: float | None = None
    done_at: float | None = None
    result: Mapping[str, Any] | None = None

    @property
    def waiting(self) -> bool:
        """Pending or retry_wait: in a queue, waiting to be picked."""
        return self.state in (JobState.PENDING, JobState.RETRY_WAIT)

    def with_entry(self, entry: Attempt, **changes: Any) -> Job:
        """This job with ``entry`` appended to its history (at most ``HISTORY_KEPT`` kept)."""
        history = (*self.history, entry)[-HISTORY_KEPT:]
        return attrs.evolve(self, history=history, **changes)

    def to_value(self) -> dict[str, Any]:
        """The msgpack map stored under the job id."""
        out: dict[str, Any] = {
            "op": self.operation,
            "req": dict(self.request),
            "key": self.key,
            "fp": self.fingerprint,
            "queue": self.queue,
            "state": self.state.value,
            "created": self.created_at,
            "due": self.due_at,
            "max": self.max_attempts,
            "attempts": self.attempts,
            "deferrals": self.deferrals,
            "indexed": self.indexed,
            "history": [entry.to_value() for entry in self.history],
        }
        optional = {
            "source": self.source,
            "boot": self.boot,
            "reason": self.reason,
            "error": self.error,
            "dead": self.dead_at,
            "done": self.done_at,
            "result": dict(self.result) if self.result is not None else None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    @classmethod
    def from_value(cls, job_id: str, value: Any) -> Job | None:
        """The job stored under ``job_id``; None for a value that is not one (the caller logs
        it: a malformed record must not crash the scheduler)."""
        if not isinstance(value, Mapping):
            return None
        try:
            result = value.get("result")
            return cls(
                id=job_id,
                operation=str(value["op"]),
                request=dict(value["req"]),
                key=str(value["key"]),
                fingerprint=str(value["fp"]),
                queue=str(value["queue"]),
                state=JobState(value["state"]),
                created_at=float(value["created"]),
                due_at=float(value["due"]),
                max_attempts=int(value["max"]),
                source=value.get("source"),
                indexed=bool(value.get("indexed", False)),
                attempts=int(value.get("attempts", 0)),
                deferrals=int(value.get("deferrals", 0)),
                boot=value.get("boot"),
                history=tuple(Attempt.from_value(e) for e in value.get("history") or ()),
                reason=value.get("reason"),
                error=value.get("error"),
                dead_at=value.get("dead"),
                done_at=value.get("done"),
                result=dict(result) if isinstance(result, Mapping) else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def to_wire(self, now: float) -> dict[str, Any]:
        """What ``jobs.get`` / ``dlq.get`` answer: every field, the request and the history."""
        return {
            "job_id": self.id,
            "operation": self.operation,
            "state": self.state.value,
            "request": dict(self.request),
            "idempotency_key": self.key,
            "queue": self.queue,
            "source": self.source,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "deferrals": self.deferrals,
            "created_at": self.created_at,
            "due_at": self.due_at,
            "age": round(max(0.0, now - self.created_at), 3),
            "reason": self.reason,
            "error": self.error,
            "dead_at": self.dead_at,
            "done_at": self.done_at,
            "result": dict(self.result) if self.result is not None else None,
            "history": [entry.to_value() for entry in self.history],
        }

    def summary(self, now: float) -> dict[str, Any]:
        """One line of ``jobs.list`` / ``dlq.list``: no request body, no history."""
        at = self.dead_at if self.state is JobState.DEAD else self.created_at
        return {
            "job_id": self.id,
            "operation": self.operation,
            "state": self.state.value,
            "idempotency_key": self.key,
            "queue": self.queue,
            "attempts": self.attempts,
            "due_at": self.due_at,
            "reason": self.reason,
            "error": self.error,
            "dead_at": self.dead_at,
            "age": round(max(0.0, now - (at or self.created_at)), 3),
        }


# ---- index keys ------------------------------------------------------------------------------


def queue_prefix(queue: str) -> bytes:
    """The first bytes of every due key of ``queue`` (a scan from here stays in the queue)."""
    return queue.encode("utf-8") + _SEP


def due_key(queue: str, due_at: float, job_id: str) -> bytes:
    """``jobs_due`` / ``jobs_retry`` key: queue, NUL, due time in microseconds, NUL, id."""
    return queue_prefix(queue) + uint_key(micros(due_at)) + _SEP + job_id.encode("ascii")


def split_due_key(raw: bytes) -> tuple[str, int, str]:
    """(queue, due in microseconds, job id) from a ``due_key``."""
    cut = raw.index(_SEP)
    queue = raw[:cut].decode("utf-8", "replace")
    due = int.from_bytes(raw[cut + 1 : cut + 9], "big")
    return queue, due, raw[cut + 10 :].decode("ascii", "replace")


def time_key(at: float, job_id: str) -> bytes:
    """``jobs_dead`` / ``jobs_done`` key: the time in microseconds, then the id."""
    return uint_key(micros(at)) + job_id.encode("ascii")


def split_time_key(raw: bytes) -> tuple[int, str]:
    """(time in microseconds, job id) from a ``time_key``."""
    return int.from_bytes(raw[:8], "big"), raw[8:].decode("ascii", "replace")


def index_entry(job: Job) -> tuple[str, bytes, Any]:
    """The one index entry ``job``'s state gives it: (table, key, value)."""
    if job.state is JobState.PENDING:
        return DUE_TABLE, due_key(job.queue, job.due_at, job.id), b""
    if job.state is JobState.RETRY_WAIT:
        return RETRY_TABLE, due_key(job.queue, job.due_at, job.id), b""
    if job.state is JobState.IN_FLIGHT:
        return INFLIGHT_TABLE, job.id.encode("ascii"), job.boot or 0
    if job.state is JobState.DEAD:
        return DEAD_TABLE, time_key(job.dead_at or job.created_at, job.id), b""
    return DONE_TABLE, time_key(job.done_at or job.created_at, job.id), b""


def transition_ops(old: Job | None, new: Job) -> list[Op]:
    """Write ``new`` (a new job when ``old`` is None) with its index entry, dropping the entry
    ``old`` had; a new indexed job also gets its ``jobs_keys`` entry."""
    table, key, value = index_entry(new)
    ops: list[Op] = [Put(JOB_TABLE, new.id.encode("ascii"), new.to_value())]
    if old is None:
        if new.indexed:
            ops.append(Put(KEY_TABLE, new.key.encode("ascii"), new.id))
    else:
        old_table, old_key, _ = index_entry(old)
        if (old_table, old_key) != (table, key):
            ops.append(Delete(old_table, old_key))
    ops.append(Put(table, key, value))
    return ops


def removal_ops(job: Job) -> list[Op]:
    """Delete ``job``, its index entry and its key entry (a key maps to one job from that job's
    submit until its removal, so the entry is this job's own)."""
    table, key, _ = index_entry(job)
    ops: list[Op] = [Delete(JOB_TABLE, job.id.encode("ascii")), Delete(table, key)]
    if job.indexed:
        ops.append(Delete(KEY_TABLE, job.key.encode("ascii")))
    return ops


def batch_ids(entries: Sequence[tuple[bytes, Any]], table: str) -> list[str]:
    """The job ids of index entries read from ``table``."""
    if table in (DUE_TABLE, RETRY_TABLE):
        return [split_due_key(raw)[2] for raw, _ in entries]
    if table == INFLIGHT_TABLE:
        return [raw.decode("ascii", "replace") for raw, _ in entries]
    return [split_time_key(raw)[1] for raw, _ in entries]
