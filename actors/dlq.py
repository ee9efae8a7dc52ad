"""The dead-letter queue: list, show, retry, kill, purge and export dead jobs.

Card
- owns: nothing; dead jobs live in storage (``jobs`` + the ``jobs_dead`` index, oldest first).
  A coordinator, not an actor: ``page`` and ``get`` read inline (on the connection reader);
  ``retry``, ``kill`` and ``purge`` run in the request's task and change jobs in chunks of
  ``CHUNK``, each chunk one durable write under ``JobStore.lock`` (so a pick or an outcome of
  the scheduler never interleaves with it; a cancelled request keeps the chunks written).
- ``page(filters, after, limit)``: dead jobs oldest first, filtered by operation, reason and age;
  paged by an opaque cursor; a filter reads at most ``SCAN_BUDGET`` index entries per page and
  answers the cursor to go on from, so a page stays fast over any number of dead jobs.
- ``retry``: one job, a filtered set, or all: each back to ``pending`` with its attempts reset
  and its idempotency key kept, due times spread at ``rate`` jobs per second (paced: a redrive
  of thousands never floods the gate), then the scheduler is told.
- ``kill``: a waiting job (pending or retry_wait), or the waiting jobs of an operation or a
  queue, to dead with reason ``killed`` (an alert each, as every move to dead). A job in
  flight is refused: its attempt ends within its timeout.
- ``purge``: deletes dead jobs matching a filter, only with ``confirm``; without it answers how
  many match (a dry run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs
import trio
import trio.lowlevel

from claykiln.actors.errors import BadRequestRefusal
from claykiln.actors.jobs import (
    DEAD_TABLE,
    WAITING_TABLES,
    Attempt,
    Job,
    JobState,
    micros,
    queue_prefix,
    removal_ops,
    split_due_key,
    split_time_key,
    transition_ops,
)
from claykiln.actors.jobs_policy import OutboxSettings
from claykiln.actors.jobs_store import JobStore, alert_dead
from claykiln.actors.log import get_logger
from claykiln.storage import Op, uint_key

__all__ = ["CHUNK", "MAX_PAGE", "SCAN_BUDGET", "DeadFilter", "DeadLetters"]

CHUNK: Final = 500
MAX_PAGE: Final = 1000
SCAN_BUDGET: Final = 5000

log = get_logger("claykiln.outbox")

DueNotice = Callable[[str, float], None]


@attrs.frozen
class DeadFilter:
    """Which dead jobs: of ``operation``, dead for ``reason``, dead at least ``older_than``
    and at most ``newer_than`` seconds ago (None: any)."""

    operation: str | None = None
    reason: str | None = None
    older_than: float | None = None
    newer_than: float | None = None

    def bounds(self, now: float) -> tuple[bytes | None, bytes | None]:
        """The ``jobs_dead`` key range the age bounds select: [start, stop)."""
        start = uint_key(micros(now - self.newer_than)) if self.newer_than is not None else None
        stop = uint_key(micros(now - self.older_than) + 1) if self.older_than is not None else None
        return start, stop

    def matches(self, job: Job) -> bool:
        return (self.operation is None or job.operation == self.operation) and (
            self.reason is None or job.reason == self.reason
        )


def _cursor(raw: bytes) -> str:
    return raw.hex()


def _after(cursor: str | None) -> bytes | None:
    """The index key to start from, strictly after the one ``cursor`` names."""
    if cursor is None:
        return None
    try:
        return bytes.fromhex(cursor) + b"\x00"
    except ValueError:
        msg = "after must be the cursor a previous page answered (next)"
        raise BadRequestRefusal(msg) from None


class DeadLetters:
    """The dead-letter queue's methods; see the module card."""

    def __init__(
        self, jobs: JobStore, settings: Callable[[], OutboxSettings], notify: DueNotice
    ) -> None:
        self.jobs = jobs
        self._settings = settings
        self._notify = notify

    # -- reads --------------------------------------------------------------------------------
    def size(self) -> int:
        """Jobs in the dead-letter queue."""
        return self.jobs.counts()["dead"]

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def _scan(
        self, filters: DeadFilter, start: bytes | None, budget: int | None
    ) -> Iterator[tuple[bytes, Job | None]]:
        """Dead-index keys from ``start`` within the filter's age range, with the job of each
        that matches (None for one that does not); stops after ``budget`` keys."""
        now = self.jobs.now()
        low, stop = filters.bounds(now)
        if low is not None and (start is None or start < low):
            start = low
        seen = 0
        while budget is None or seen < budget:
            limit = CHUNK if budget is None else min(CHUNK, budget - seen)
            keys = self.jobs.index_page(DEAD_TABLE, start, limit, stop=stop)
            for raw in keys:
                _, job_id = split_time_key(raw)
                job = self.jobs.get(job_id)
                yield raw, job if job is not None and filters.matches(job) else None
            seen += len(keys)
            if len(keys) < limit:
                return
            start = keys[-1] + b"\x00"

    def page(
        self, filters: DeadFilter, *, after: str | None, limit: int, full: bool = False
    ) -> dict[str, Any]:
        """``{items, next}``: up to ``limit`` dead jobs (summaries, or whole records with
        ``full``) from the cursor ``after``; ``next`` is None at the end."""
        now = self.jobs.now()
        items: list[dict[str, Any]] = []
        last: bytes | None = None
        scanned = 0
        for raw, job in self._scan(filters, _after(after), SCAN_BUDGET):
            last, scanned = raw, scanned + 1
            if job is not None:
                items.append(job.to_wire(now) if full else job.summary(now))
                if len(items) >= limit:
                    break
        more = last is not None and (len(items) >= limit or scanned >= SCAN_BUDGET)
        return {"items": items, "next": _cursor(last) if more and last is not None else None}

    async def count(self, filters: DeadFilter) -> int:
        """Dead jobs ``filters`` selects (a checkpoint every ``CHUNK`` keys: other tasks run)."""
        matched = 0
        start: bytes | None = None
        while True:
            last = None
            for raw, job in self._scan(filters, start, CHUNK):
                last = raw
                matched += job is not None
            if last is None:
                return matched
            start = last + b"\x00"
            await trio.lowlevel.checkpoint()

    # -- changes ------------------------------------------------------------------------------
    async def retry(
        self,
        *,
        job_id: str | None = None,
        filters: DeadFilter | None = None,
        rate: float | None = None,
    ) -> dict[str, Any]:
        """Back to ``pending`` (see the card): ``job_id``, or every dead job ``filters``
        selects (``DeadFilter()``: all). Raises ``BadRequestRefusal`` for a job that is not
        dead. Answers ``{retried, first_due, last_due}``."""
        settings = self._settings()
        pace = 1.0 / (rate or settings.retry_rate)
        now = self.jobs.now()
        count = 0
        due_by_queue: dict[str, float] = {}

        def revived(job: Job) -> Job:
            nonlocal count
            due = now + count * pace
            count += 1
            due_by_queue.setdefault(job.queue, due)
            return job.with_entry(
                Attempt(now, "retried", error=f"was dead: {job.reason}"),
                state=JobState.PENDING,
                attempts=0,
                deferrals=0,
                max_attempts=settings.policy(job.operation).max_attempts,
                due_at=due,
                dead_at=None,
                reason=None,
                error=None,
            )

        if job_id is not None:
            await self._change_one(job_id, JobState.DEAD, revived)
        else:
            await self._change_dead(filters or DeadFilter(), revived)
        for queue, due in due_by_queue.items():
            self._notify(queue, due)
        if count:
            log.info("dlq.retried", jobs=count, rate=round(1.0 / pace, 3))
        last = now + (count - 1) * pace if count else None
        return {"retried": count, "first_due": now if count else None, "last_due": last}

    async def kill(
        self,
        *,
        job_id: str | None = None,
        operation: str | None = None,
        queue: str | None = None,
    ) -> dict[str, Any]:
        """Move waiting jobs to dead, reason ``killed``: ``job_id``, or those of ``operation``
        and/or ``queue``. Raises ``BadRequestRefusal`` for a job that is not waiting."""
        now = self.jobs.now()
        killed: list[Job] = []

        def dead(job: Job) -> Job:
            new = job.with_entry(
                Attempt(now, "killed", error="killed by an operator"),
                state=JobState.DEAD,
                dead_at=now,
                reason="killed",
                error=f"killed by an operator while {job.state.value}",
            )
            killed.append(new)
            return new

        if job_id is not None:
            await self._change_one(job_id, None, dead)
        else:
            if operation is None and queue is None:
                msg = "dlq.kill: give job_id, or operation and/or queue to select waiting jobs"
                raise BadRequestRefusal(msg)
            await self._change_waiting(operation, queue, dead)
        for job in killed:
            alert_dead(job)
        return {"killed": len(killed)}

    async def purge(self, filters: DeadFilter, *, confirm: bool) -> dict[str, Any]:
        """Delete the dead jobs ``filters`` selects (with ``confirm``); ``{matched, purged}``."""
        if not confirm:
            return {"matched": await self.count(filters), "purged": 0, "dry_run": True}
        purged = await self._change_dead(filters, None)
        if purged:
            log.info("dlq.purged", jobs=purged)
        return {"matched": purged, "purged": purged, "dry_run": False}

    # -- chunked changes under the lock ---------------------------------------------------------
    async def _change_one(
        self, job_id: str, want: JobState | None, change: Callable[[Job], Job]
    ) -> None:
        """Change job ``job_id``; ``want``: the state it must be in (None: waiting)."""
        async with self.jobs.lock:
            job = self.jobs.get(job_id)
            if job is None:
                msg = f"no job {job_id!r} (never submitted, purged, or swept after it was done)"
                raise BadRequestRefusal(msg)
            ok = job.waiting if want is None else job.state is want
            if not ok:
                wanted = "waiting (pending or retry_wait)" if want is None else want.value
                msg = f"job {job_id} is {job.state.value}, not {wanted}"
                if job.state is JobState.IN_FLIGHT:
                    msg += "; its attempt ends within its timeout: try again then"
                raise BadRequestRefusal(msg, details={"state": job.state.value})
            await self.jobs.write(transition_ops(job, change(job)))

    async def _change_dead(self, filters: DeadFilter, change: Callable[[Job], Job] | None) -> int:
        """Apply ``change`` (None: delete) to every dead job ``filters`` selects, a chunk per
        write; the number changed."""
        done = 0
        start: bytes | None = None
        while True:
            async with self.jobs.lock:
                ops: list[Op] = []
                chosen = 0
                last: bytes | None = None
                for raw, job in self._scan(filters, start, CHUNK):
                    last = raw
                    if job is None:
                        continue
                    if change is None:
                        ops.extend(removal_ops(job))
                    else:
                        ops.extend(transition_ops(job, change(job)))
                    chosen += 1
                if ops:
                    await self.jobs.write(ops)
            done += chosen
            if last is None:
                return done
            start = last + b"\x00"  # changed, deleted or skipped: every key up to it is done

    async def _change_waiting(
        self, operation: str | None, queue: str | None, change: Callable[[Job], Job]
    ) -> int:
        """Apply ``change`` to the waiting jobs of ``operation`` / ``queue``, a chunk per write."""
        done = 0
        prefix = queue_prefix(queue) if queue is not None else None
        for table in WAITING_TABLES:
            start = prefix
            while True:
                async with self.jobs.lock:
                    keys = self.jobs.index_page(table, start, CHUNK)
                    if prefix is not None:
                        keys = [k for k in keys if k.startswith(prefix)]
                    ops: list[Op] = []
                    for raw in keys:
                        job = self.jobs.get(split_due_key(raw)[2])
                        if job is None or not job.waiting:
                            continue
                        if operation is not None and job.operation != operation:
                            continue
                        ops.extend(transition_ops(job, change(job)))
                        done += 1
                    if ops:
                        await self.jobs.write(ops)
                if len(keys) < CHUNK:
                    break
                start = keys[-1] + b"\x00"
        return done
