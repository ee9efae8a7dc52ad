"""What an attempt's outcome does to its job: the scheduler's settlement, without I/O.

``settle`` judges the outcome of one attempt (``jobs_policy.judge``) with what the moment
knows: the operation as configured now (a reload may have changed it), whether it is safe to
repeat (``repeat_safe`` or a ``key_field``), and whether its breaker refuses calls now (read
from the board's published snapshot: a failure during an outage burns no attempt). It answers
the job's next state with the wait before its next try, and counts a webhook row (a 2xx) or
Clay's refusal at the source's lifetime cap into the write's ``QuotaTally``.
"""

from __future__ import annotations

import random

from claykiln.actors.call import CallResult, Operation
from claykiln.actors.errors import BreakerOpenRefusal, Refusal
from claykiln.actors.idempotency_keys import repeatable_in_doubt
from claykiln.actors.jobs import Job, JobState
from claykiln.actors.jobs_policy import OutboxSettings, Verdict, apply_judgement, judge
from claykiln.actors.jobs_quota import QuotaTally
from claykiln.actors.jobs_store import alert_dead
from claykiln.actors.log import get_logger
from claykiln.actors.pipeline import CallPipeline

__all__ = ["breaker_refusing", "settle", "settled"]

log = get_logger("claykiln.outbox")


def breaker_refusing(pipeline: CallPipeline, key: str) -> bool:
    """Whether breaker ``key`` refuses calls now (from the published snapshot)."""
    try:
        pipeline.breakers.check(key)
    except BreakerOpenRefusal:
        return True
    return False


def settle(
    job: Job,
    op: Operation,
    outcome: CallResult | Refusal,
    *,
    duration_ms: float,
    pipeline: CallPipeline,
    settings: OutboxSettings,
    tally: QuotaTally,
    now: float,
    rng: random.Random,
) -> tuple[Job, float]:
    """``job`` after an attempt of ``op`` that ended with ``outcome`` at wall time ``now``,
    and the wait before its next try (0 when it is done or dead)."""
    policy = settings.policy(job.operation)
    op = pipeline.operations.get(job.operation, op)
    judgement = judge(
        outcome,
        job=job,
        policy=policy,
        repeatable=repeatable_in_doubt(repeat_safe=op.repeat_safe, key_field=policy.key_field),
        breaker_refusing=breaker_refusing(pipeline, op.breaker_key),
        now=now,
        duration_ms=duration_ms,
        rng=rng,
    )
    if job.source is not None and policy.webhook is not None:
        exhausted = judgement.reason == "quota_exhausted"
        if judgement.verdict is Verdict.DONE or exhausted:
            cap = policy.webhook.lifetime_rows
            tally.count(job.source, cap, accepted=not exhausted, now=now)
    return apply_judgement(job, judgement, now), judgement.delay


def settled(new: Job, delay: float, now: float, counters: dict[str, int]) -> float | None:
    """Once ``new`` (a job after its attempt) is written: count and log it (``dlq.dead`` for a
    move to dead); the trio time its queue needs a look again (None: done or dead)."""
    if new.state is JobState.DONE:
        counters["done"] += 1
        log.debug("job.done", job_id=new.id, operation=new.operation, attempts=new.attempts)
        return None
    if new.state is JobState.DEAD:
        counters["dead"] += 1
        alert_dead(new)
        return None
    wait = round(delay, 3)
    if new.deferrals == 0:
        counters["retried"] += 1
        log.debug(
            "job.retry",
            job_id=new.id,
            operation=new.operation,
            attempts=new.attempts,
            delay=wait,
            error=new.error,
        )
    else:
        counters["deferred"] += 1
        log.debug(
            "job.deferred",
            job_id=new.id,
            operation=new.operation,
            attempts=new.attempts,
            delay=wait,
            error=new.error,
        )
    return now + delay
