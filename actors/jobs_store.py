"""The outbox's tables: inline reads, and changes made under one lock through the writer.

``JobStore`` is shared by the submit side (actors/outbox.py), the scheduler actor
(actors/scheduler.py) and the dead-letter methods (actors/dlq.py). Its promises:

- Reads (``get``, ``job_for_key``, ``waiting_heads``, ``queues``, ``index_page``, ``counts``,
  ``quota``) run inline on the trio thread, short and materialized (storage/env.py), and never
  scan the records: every question is answered from one index (actors/jobs.py).
- ``lock``: every change to an existing job (pick, outcome, sweep, an operator's retry, kill or
  purge) reads the job and writes its next state while holding it, so two of them never
  interleave their read and write across the writer's await. New jobs need no lock (their ids
  are fresh); the submit side serializes keys itself.
- ``write(ops)`` is ``Writer.write``: durable once it returns (fsynced when the store syncs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

import trio

from claykiln.actors.jobs import (
    DEAD_TABLE,
    DONE_TABLE,
    DUE_TABLE,
    INFLIGHT_TABLE,
    JOB_TABLE,
    KEY_TABLE,
    RETRY_TABLE,
    WAITING_TABLES,
    Job,
    queue_prefix,
    split_due_key,
)
from claykiln.actors.jobs_quota import QUOTA_TABLE, SourceQuota
from claykiln.actors.log import alert, get_logger
from claykiln.actors.writer import Writer
from claykiln.storage import Op, Store

__all__ = ["QUEUE_SCAN_LIMIT", "JobStore", "WaitingHead", "alert_dead"]

QUEUE_SCAN_LIMIT: Final = 10_000
"""At most this many distinct queues are enumerated at start (a guard, far above real use)."""

log = get_logger("claykiln.outbox")

WaitingHead = tuple[int, str, str, bytes]
"""(due in microseconds, job id, index table, index key) of a waiting job."""


class JobStore:
    """The outbox's tables in one ``Store``, written through one ``Writer``; see the module."""

    def __init__(
        self, store: Store, writer: Writer, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.writer = writer
        self._wall_clock = wall_clock
        self.lock = trio.Lock()

    @property
    def boot(self) -> int:
        """This process's boot count (an in-flight entry names the boot that took it)."""
        return self.store.meta.boot_count

    def now(self) -> float:
        """Wall-clock seconds, as job records store them."""
        return self._wall_clock()

    async def write(self, ops: Sequence[Op]) -> None:
        """Commit ``ops`` in one transaction, durably; raises what ``Writer.write`` raises."""
        await self.writer.write(ops)

    # -- jobs -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``; None when absent or malformed (logged)."""
        try:
            raw_id = job_id.encode("ascii")
        except UnicodeEncodeError:
            return None
        if not raw_id:
            return None
        value = self.store.get(JOB_TABLE, raw_id)
        if value is None:
            return None
        job = Job.from_value(job_id, value)
        if job is None:
            log.warning("outbox.malformed_job", job_id=job_id)
        return job

    def job_for_key(self, key: str) -> Job | None:
        """The job that owns idempotency key ``key``, or None."""
        job_id = self.store.get(KEY_TABLE, key.encode("ascii"))
        return self.get(job_id) if isinstance(job_id, str) else None

    # -- waiting jobs -----------------------------------------------------------------------
    def waiting_heads(self, queue: str, limit: int) -> list[WaitingHead]:
        """The first ``limit`` waiting jobs of ``queue`` (pending and retry_wait), by due time."""
        prefix = queue_prefix(queue)
        heads: list[WaitingHead] = []
        for table in WAITING_TABLES:
            for raw, _ in self.store.items(table, prefix, limit=limit):
                if not raw.startswith(prefix):
                    break
                _, due, job_id = split_due_key(raw)
                heads.append((due, job_id, table, raw))
        heads.sort()
        return heads[:limit]

    def queues(self) -> set[str]:
        """Every queue with a waiting job: one seek per queue, never a scan of the jobs."""
        found: set[str] = set()
        for table in WAITING_TABLES:
            start: bytes | None = None
            while len(found) < QUEUE_SCAN_LIMIT:
                page = self.store.items(table, start, limit=1)
                if not page:
                    break
                raw = page[0][0]
                queue, _, _ = split_due_key(raw)
                found.add(queue)
                start = queue_prefix(queue)[:-1] + b"\x01"
        return found

    def index_page(
        self, table: str, start: bytes | None, limit: int, *, stop: bytes | None = None
    ) -> list[bytes]:
        """Up to ``limit`` keys of index ``table`` from ``start`` (inclusive), below ``stop``."""
        keys = []
        for raw, _ in self.store.items(table, start, limit=limit):
            if stop is not None and raw >= stop:
                break
            keys.append(raw)
        return keys

    def counts(self) -> dict[str, int]:
        """Jobs per state (one index each; O(1) reads)."""
        return {
            "pending": self.store.count(DUE_TABLE),
            "retry_wait": self.store.count(RETRY_TABLE),
            "in_flight": self.store.count(INFLIGHT_TABLE),
            "dead": self.store.count(DEAD_TABLE),
            "done": self.store.count(DONE_TABLE),
        }

    def in_flight_ids(self) -> list[str]:
        """Ids of the jobs whose stored state is in flight."""
        return [raw.decode("ascii", "replace") for raw, _ in self.store.items(INFLIGHT_TABLE)]

    # -- webhook sources ----------------------------------------------------------------------
    def quota(self, source: str) -> SourceQuota:
        """The stored count of webhook source ``source`` (zero when never counted)."""
        return SourceQuota.from_value(source, self.store.get(QUOTA_TABLE, source.encode("utf-8")))

    def quotas(self, start: str | None = None, limit: int = 1000) -> list[SourceQuota]:
        """Stored counts in source order from ``start``."""
        begin = start.encode("utf-8") if start is not None else None
        return [
            SourceQuota.from_value(raw.decode("utf-8", "replace"), value)
            for raw, value in self.store.items(QUOTA_TABLE, begin, limit=limit)
        ]

    def queue_size(self, queue: str, cap: int) -> int:
        """Waiting jobs of ``queue``, counted up to ``cap`` (a bounded read, for listings)."""
        prefix = queue_prefix(queue)
        total = 0
        for table in WAITING_TABLES:
            for raw, _ in self.store.items(table, prefix, limit=cap - total):
                if not raw.startswith(prefix):
                    break
                total += 1
            if total >= cap:
                break
        return total


def alert_dead(job: Job) -> None:
    """The alert every move to the dead-letter queue logs (docs/alerting.md, ``dlq.dead``)."""
    alert(
        log,
        "dlq.dead",
        severity="warning",
        job_id=job.id,
        operation=job.operation,
        reason=job.reason,
        attempts=job.attempts,
        error=job.error,
    )
