"""The scheduler's upkeep: what a start finds left in flight, and the sweep of done jobs.

- ``recover_in_flight``: jobs in flight under an earlier boot (the ``jobs_inflight`` index,
  never a scan of the jobs) were interrupted by a crash or a stop past the grace period. Each is
  in doubt: due again now where its operation is safe to repeat (or stamps a ``key_field``),
  else dead with reason ``in_doubt``. Written in batches of ``RECOVERY_BATCH``; one alert
  ``outbox.in_doubt`` sums it up, and each move to dead logs ``dlq.dead``. Also returns the
  queues that hold waiting jobs (one seek per queue) and the sources held at their cap.
- ``sweep_done``: deletes up to ``SWEEP_BATCH`` done jobs older than the retention (the
  ``jobs_done`` index, oldest first), with their idempotency keys, in one write.
"""

from __future__ import annotations

from typing import Final

import attrs

from claykiln.actors.idempotency_keys import repeatable_in_doubt
from claykiln.actors.jobs import (
    DONE_TABLE,
    INFLIGHT_TABLE,
    JobState,
    micros,
    removal_ops,
    split_time_key,
    transition_ops,
)
from claykiln.actors.jobs_policy import OutboxSettings, recover_in_doubt
from claykiln.actors.jobs_store import JobStore, alert_dead
from claykiln.actors.log import alert, get_logger
from claykiln.actors.pipeline import CallPipeline
from claykiln.storage import Delete, Op, uint_key

__all__ = ["RECOVERY_BATCH", "SWEEP_BATCH", "Recovered", "recover_in_flight", "sweep_done"]

RECOVERY_BATCH: Final = 1000
SWEEP_BATCH: Final = 256
IN_DOUBT_SAMPLE: Final = 20  # job ids named in the start-up alert (the counts are exact)
QUOTA_PAGE: Final = 1000

log = get_logger("claykiln.outbox")


@attrs.frozen
class Recovered:
    """What the start found: jobs in doubt (``requeued`` + ``dead``), the queues with waiting
    jobs, the held sources."""

    in_doubt: int
    requeued: int
    dead: int
    queues: set[str]
    held: set[str]


async def recover_in_flight(
    jobs: JobStore, pipeline: CallPipeline, settings: OutboxSettings
) -> Recovered:
    """Settle the jobs an earlier boot left in flight (see the module docstring)."""
    ids = jobs.in_flight_ids()
    requeued: list[str] = []
    dead: list[str] = []
    for start in range(0, len(ids), RECOVERY_BATCH):
        ops: list[Op] = []
        dead_jobs = []
        now = jobs.now()
        for job_id in ids[start : start + RECOVERY_BATCH]:
            job = jobs.get(job_id)
            if job is None or job.state is not JobState.IN_FLIGHT:
                ops.append(Delete(INFLIGHT_TABLE, job_id.encode("ascii")))
                continue
            op = pipeline.operations.get(job.operation)
            policy = settings.policy(job.operation)
            repeatable = op is not None and repeatable_in_doubt(
                repeat_safe=op.repeat_safe, key_field=policy.key_field
            )
            new = recover_in_doubt(job, now, repeatable=repeatable)
            ops.extend(transition_ops(job, new))
            if new.state is JobState.DEAD:
                dead.append(job.id)
                dead_jobs.append(new)
            else:
                requeued.append(job.id)
        await jobs.write(ops)
        for job in dead_jobs:
            alert_dead(job)
    if requeued or dead:
        alert(
            log,
            "outbox.in_doubt",
            severity="warning",
            count=len(requeued) + len(dead),
            requeued=len(requeued),
            dead=len(dead),
            jobs=[*dead, *requeued][:IN_DOUBT_SAMPLE],
            boot=jobs.boot,
        )
    return Recovered(
        in_doubt=len(requeued) + len(dead),
        requeued=len(requeued),
        dead=len(dead),
        queues=jobs.queues(),
        held=_held_sources(jobs),
    )


def _held_sources(jobs: JobStore) -> set[str]:
    held: set[str] = set()
    start: str | None = None
    while True:
        page = jobs.quotas(start, QUOTA_PAGE)
        held.update(q.source for q in page if q.held)
        if len(page) < QUOTA_PAGE:
            return held
        start = page[-1].source + "\x00"


async def sweep_done(jobs: JobStore, retention: float) -> tuple[int, bool]:
    """Delete one batch of done jobs older than ``retention`` seconds; (deleted, batch full)."""
    cutoff = uint_key(micros(jobs.now() - retention))
    keys = jobs.index_page(DONE_TABLE, None, SWEEP_BATCH, stop=cutoff)
    if not keys:
        return 0, False
    async with jobs.lock:
        ops: list[Op] = []
        deleted = 0
        for raw in keys:
            _, job_id = split_time_key(raw)
            job = jobs.get(job_id)
            if job is not None and job.state is JobState.DONE:
                ops.extend(removal_ops(job))
                deleted += 1
            else:
                ops.append(Delete(DONE_TABLE, raw))
        await jobs.write(ops)
    log.debug("outbox.swept", jobs=deleted)
    return deleted, len(keys) >= SWEEP_BATCH
