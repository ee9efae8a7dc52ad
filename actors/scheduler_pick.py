"""Which due jobs the scheduler starts now: a decision over storage reads and the published
snapshots of the breaker and gate boards (no ask, no await).

``choose`` looks at the queues whose look is due: each queue's first waiting jobs by due time
(an index read, never a scan); a job starts only when its breaker admits calls and its gate
admits it within ``LEAD`` seconds, counting the jobs already started on that gate in this pass
(they have not reserved their tokens yet). It answers the jobs to start, the write that takes
them in flight (and drops index entries their jobs no longer have), the jobs refused because a
reload removed their operation (dead, ``refused``), and each looked-at queue's next look: its
next due job, when its breaker or gate admits one, or None when it has no waiting job.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Final

import attrs

from claykiln.actors.call import Operation
from claykiln.actors.errors import BreakerOpenRefusal
from claykiln.actors.jobs import Attempt, Job, JobState, micros, transition_ops
from claykiln.actors.jobs_policy import start_attempt
from claykiln.actors.jobs_store import JobStore, WaitingHead
from claykiln.actors.pipeline import CallPipeline
from claykiln.storage import Delete, Op

__all__ = ["BREAKER_LOOK", "LEAD", "MIN_WAIT", "Pick", "choose", "refused_unknown", "wait_for"]

LEAD: Final = 0.05
"""A job starts when its gate admits it within this many seconds (not long before)."""
MIN_WAIT: Final = 0.01
BREAKER_LOOK: Final = 0.5
"""A queue whose breaker refuses calls is looked at again this often (at most)."""


@attrs.define
class Pick:
    """What ``choose`` decided (see the module docstring); ``looks``: queue -> the trio time
    of its next look, None to stop watching it."""

    started: list[tuple[Job, Operation]] = attrs.Factory(list)
    ops: list[Op] = attrs.Factory(list)
    refused: list[Job] = attrs.Factory(list)
    looks: dict[str, float | None] = attrs.Factory(dict)


def choose(
    jobs: JobStore,
    pipeline: CallPipeline,
    queues: Iterable[str],
    *,
    held: Collection[str],
    free: int,
    now: float,
) -> Pick:
    """The jobs of ``queues`` to start now, at most ``free`` (``now``: trio time)."""
    pick = Pick()
    now_us = micros(jobs.now())
    candidates: list[tuple[WaitingHead, str]] = []
    for queue in queues:
        if queue in held:
            pick.looks[queue] = None  # a release looks at it again
            continue
        heads = jobs.waiting_heads(queue, free)
        if not heads:
            pick.looks[queue] = None
            continue
        if heads[0][0] > now_us:
            pick.looks[queue] = now + (heads[0][0] - now_us) / 1e6
            continue
        pick.looks[queue] = now  # more may be due: look again when a slot frees
        candidates.extend((head, queue) for head in heads if head[0] <= now_us)
    candidates.sort()
    blocked: set[str] = set()
    starts: dict[str, int] = {}
    for (_, job_id, table, raw), queue in candidates:
        if len(pick.started) >= free:
            break
        if queue in blocked:
            continue
        job = jobs.get(job_id)
        if job is None or not job.waiting:
            pick.ops.append(Delete(table, raw))  # an index entry its job no longer has
            continue
        op = pipeline.operations.get(job.operation)
        if op is None:
            dead = refused_unknown(job, jobs.now())
            pick.ops.extend(transition_ops(job, dead))
            pick.refused.append(dead)
            continue
        wait = wait_for(pipeline, op, starts.get(op.gate, 0), now)
        if wait > 0:
            blocked.add(queue)
            pick.looks[queue] = now + wait
            continue
        taken = start_attempt(job, jobs.boot)
        pick.ops.extend(transition_ops(job, taken))
        pick.started.append((taken, op))
        starts[op.gate] = starts.get(op.gate, 0) + 1
    return pick


def wait_for(pipeline: CallPipeline, op: Operation, started_on_gate: int, now: float) -> float:
    """Seconds before a job of ``op`` may start: the breaker's reopening (looked at again
    within ``BREAKER_LOOK``: a half-open breaker's hint is the probe timeout, and its closing
    is not announced), the gate's closure or its next admission beyond ``LEAD`` (counting
    ``started_on_gate`` jobs started on it in this pass); 0 when it may start now."""
    try:
        pipeline.breakers.check(op.breaker_key)
    except BreakerOpenRefusal as exc:
        return min(max(exc.retry_after or BREAKER_LOOK, MIN_WAIT), BREAKER_LOOK)
    view = pipeline.gate.views.get(op.gate)
    if view is None:
        return 0.0
    at = view.earliest(now)
    if view.policy is not None and started_on_gate:
        policy = view.policy
        tat = max(view.tat, now) + started_on_gate * policy.interval
        at = max(at, tat - policy.tolerance)
    ahead = at - now
    return max(ahead - LEAD, MIN_WAIT) if ahead > LEAD else 0.0


def refused_unknown(job: Job, now: float) -> Job:
    """A waiting job whose operation a reload removed: dead, ``refused`` (a retry after the
    operation is configured again runs it)."""
    why = f"unknown_operation: operation {job.operation!r} is not configured any more"
    return job.with_entry(
        Attempt(now, "unknown_operation", error=why),
        state=JobState.DEAD,
        dead_at=now,
        reason="refused",
        error=why,
    )
