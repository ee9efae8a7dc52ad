"""The scheduler actor: runs due jobs through the call pipeline and moves each one on.

Card
- owns: the jobs in flight in this process (at most ``concurrency``, each in its own runner
  task in the actor's nursery), when each queue next needs a look (``look_at``), the webhook
  sources held at Clay's cap and their counts, the sweeper's schedule. Jobs live in storage
  (actors/jobs.py); every change to one is made under ``JobStore.lock``.
- receives: ``_Due`` (tell: a queue holds a job due at a time: the submit side, an operator's
  retry), ``_Finished`` (post: a runner's outcome), ``_Counted`` (tell: a ``call`` pushed a row
  to a webhook source, or met its cap), ``_Release`` (ask: un-hold a source), ``_Drain`` (ask:
  stop starting jobs).
- replies: ``_Release`` -> the source's ``SourceQuota``; ``_Drain`` -> None at once.
- sends to: the call pipeline (one ``call`` per attempt, lane -> breaker -> gate -> upstream),
  the storage writer; alerts ``dlq.dead`` (every move to dead), ``outbox.in_doubt`` (start-up),
  ``quota.near_cap`` (80 %, 95 %), ``quota.exhausted``.
- picking (each wake): for every queue whose look is due, its first waiting jobs by due time
  (an index read, never a scan); a job starts only when its breaker admits calls and its gate
  admits it within ``LEAD`` seconds (read from the published snapshots: no attempt burns on an
  open breaker or a closed gate, and a job is not left in flight waiting for a token); held
  sources are not looked at. The move to ``in_flight`` is durable before the runner sends.
- outcomes: judged by ``jobs_policy.judge`` and written in one transaction per wake (done,
  retry_wait with backoff, pending or retry_wait again when deferred, dead); a webhook's 2xx
  counts a row for its source (``jobs_quota``), as does one a ``call`` pushed.
- at start (before ``task_status.started``): jobs in flight under an earlier boot are in doubt:
  due again where the operation is safe to repeat (or has a ``key_field``), else dead with reason
  ``in_doubt``; the queues are found with one seek each, held sources read.
- sweeper: every ``SWEEP_INTERVAL`` seconds, up to ``SWEEP_BATCH`` done jobs older than the
  retention are deleted in one write; a full batch is followed by the next one at once.
- shutdown: ``drain(grace)`` stops starting jobs and waits up to ``grace`` seconds for those in
  flight to end and be written. Cancelled, a runner's job stays ``in_flight`` in storage: the
  next start treats it as in doubt.
- on failure: an outcome whose write fails is kept and written again ``WRITE_RETRY`` seconds
  later (the job holds its slot meanwhile); a pick whose write fails starts nothing.

Beside it: which due jobs start (scheduler_pick.py), what an outcome does to its job and what
follows once it is written (scheduler_settle.py), the sources held at their cap
(scheduler_quota.py), start-up recovery and the sweeper (scheduler_upkeep.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs
import trio

from claykiln.actors.call import CallResult, Operation
from claykiln.actors.errors import InternalRefusal, Refusal
from claykiln.actors.jobs import Job, transition_ops
from claykiln.actors.jobs_policy import (
    OutboxSettings,
)
from claykiln.actors.jobs_quota import QuotaTally, SourceQuota
from claykiln.actors.jobs_store import JobStore, alert_dead
from claykiln.actors.log import get_logger
from claykiln.actors.mailbox import ActorStopped, Mailbox, Reply
from claykiln.actors.outbox import attempt_request
from claykiln.actors.pipeline import CallPipeline
from claykiln.actors.scheduler_pick import choose
from claykiln.actors.scheduler_quota import SourceHolds
from claykiln.actors.scheduler_settle import settle, settled
from claykiln.actors.scheduler_upkeep import recover_in_flight, sweep_done
from claykiln.storage import Op, StorageError

__all__ = ["SCHEDULER_INBOX", "SWEEP_INTERVAL", "Scheduler"]

SCHEDULER_INBOX: Final = 4096
SWEEP_INTERVAL: Final = 5.0
WRITE_RETRY: Final = 1.0

log = get_logger("claykiln.outbox")


@attrs.frozen(eq=False)
class _Due:
    queue: str
    due_at: float  # wall clock


@attrs.frozen(eq=False)
class _Finished:
    job_id: str
    outcome: CallResult | Refusal
    duration_ms: float


@attrs.frozen(eq=False)
class _Counted:
    source: str
    cap: int
    accepted: bool  # a row Clay accepted; False: its 403 "Record limit reached"


@attrs.frozen(eq=False)
class _Release:
    source: str
    reply: Reply[SourceQuota]


@attrs.frozen(eq=False)
class _Drain:
    reply: Reply[None]


_Message = _Due | _Finished | _Counted | _Release | _Drain


@attrs.define
class _SchedulerState:
    """Touched only by the actor task (runners only post ``_Finished``)."""

    running: dict[str, tuple[Job, Operation]] = attrs.Factory(dict)
    look_at: dict[str, float] = attrs.Factory(dict)  # queue -> trio time of its next look
    unwritten: list[_Finished] = attrs.Factory(list)
    unwritten_counts: list[_Counted] = attrs.Factory(list)
    retry_writes_at: float = math.inf
    next_sweep: float = 0.0
    draining: bool = False
    counters: dict[str, int] = attrs.Factory(
        lambda: dict.fromkeys(
            ("started", "done", "retried", "deferred", "dead", "swept", "in_doubt_at_start"), 0
        )
    )


class Scheduler:
    """The outbox's scheduler actor; see the module card."""

    def __init__(
        self,
        jobs: JobStore,
        pipeline: CallPipeline,
        settings: Callable[[], OutboxSettings],
        *,
        rng: random.Random | None = None,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self.jobs = jobs
        self.pipeline = pipeline
        self._settings = settings
        self._rng = rng or random.Random()
        self._sweep_interval = sweep_interval
        self._mailbox: Mailbox[_Message] = Mailbox("scheduler", SCHEDULER_INBOX)
        self._state = _SchedulerState()
        self._idle = trio.Event()
        self._started = False
        self._runners: trio.Nursery | None = None
        # Published for other tasks (the actor is the only writer): when each queue is looked
        # at next (a read-only view of the actor's own dict) and the held sources (``view``).
        self._looks: Mapping[str, float] = MappingProxyType(self._state.look_at)
        self._holds = SourceHolds(jobs)

    # -- any task ----------------------------------------------------------------------------
    def job_due(self, queue: str, due_at: float) -> None:
        """Tell the actor ``queue`` holds a job due at wall time ``due_at`` (never blocks; a
        full inbox drops the notice, and the queue is looked at on the next sweep). Nothing is
        sent when the actor already plans to look at the queue by then: it reads the queue's
        jobs from storage when it looks, and the job is written before this is called."""
        at = trio.current_time() + max(0.0, due_at - self.jobs.now())
        if self._looks.get(queue, math.inf) <= at:
            return
        self._mailbox.tell(_Due(queue, due_at))

    def row_counted(self, source: str, cap: int, *, accepted: bool = True) -> None:
        """Tell the actor a ``call`` pushed a row to webhook source ``source`` (cap ``cap``):
        Clay accepted it, or (``accepted`` False) refused it at its lifetime cap. Counted with
        the jobs' rows; never blocks (a full inbox drops the count)."""
        self._mailbox.tell(_Counted(source, cap, accepted))

    def is_held(self, source: str) -> bool:
        """Whether webhook source ``source`` is held at its cap (read without an ask)."""
        return source in self._holds.view

    async def release(self, source: str) -> SourceQuota:
        """Un-hold webhook source ``source`` durably; its jobs run again. Raises
        ``ActorStopped`` if the actor is not running, ``StorageError`` if it was not saved."""
        reply: Reply[SourceQuota] = Reply()
        return await self._mailbox.ask(_Release(source, reply), reply)

    async def drain(self, grace: float) -> bool:
        """Stop starting jobs; wait up to ``grace`` seconds for the jobs in flight to end and be
        written. True when none is left in flight."""
        reply: Reply[None] = Reply()
        try:
            await self._mailbox.ask(_Drain(reply), reply)
        except ActorStopped:
            return not self._state.running
        with trio.move_on_after(grace):
            await self._idle.wait()
        return self._idle.is_set()

    def held_sources(self) -> dict[str, dict[str, Any]]:
        """The sources held at their cap, with their counts (for ``status``)."""
        return self._holds.to_wire()

    def stats(self) -> dict[str, Any]:
        """For ``status``: jobs per state (from the indexes: ``dead`` is the DLQ's size), jobs
        running in this process, queues being watched, held sources, and ``since_start``:
        jobs started, done, retried, deferred, moved to dead, swept, in doubt at start."""
        s = self._state
        out: dict[str, Any] = dict(self.jobs.counts())
        out["running"] = len(s.running)
        out["queues"] = len(s.look_at)
        out["held_sources"] = sorted(self._holds.held)
        out["draining"] = s.draining
        out["since_start"] = dict(s.counters)
        return out

    # -- the actor ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover jobs left in flight, then pick, run and settle jobs until cancelled."""
        if self._started:
            msg = "Scheduler.run was already started; make a new Scheduler to restart"
            raise RuntimeError(msg)
        self._started = True
        s = self._state
        recovered = await recover_in_flight(self.jobs, self.pipeline, self._settings())
        s.counters["in_doubt_at_start"] = recovered.in_doubt
        self._holds.reset(recovered.held)
        now = trio.current_time()
        s.look_at.update(dict.fromkeys(recovered.queues, now))
        s.next_sweep = now + self._sweep_interval
        batch: list[_Message] = []
        try:
            async with trio.open_nursery() as runners:
                self._runners = runners
                task_status.started()
                while True:
                    batch = []
                    with trio.move_on_at(self._next_wake()):
                        batch = await self._mailbox.drain()
                    await self._handle(batch)
                    await self._pick()
                    if trio.current_time() >= s.next_sweep:
                        await self._sweep()
        finally:
            self._mailbox.stop(batch)
            self._idle.set()

    def _next_wake(self) -> float:
        s = self._state
        wake = min(s.next_sweep, s.retry_writes_at)
        if not s.draining and len(s.running) < self._settings().concurrency and s.look_at:
            wake = min(wake, *s.look_at.values())
        return wake

    async def _handle(self, batch: list[_Message]) -> None:
        s = self._state
        finished: list[_Finished] = []
        counted: list[_Counted] = []
        for message in batch:
            if isinstance(message, _Due):
                at = trio.current_time() + max(0.0, message.due_at - self.jobs.now())
                s.look_at[message.queue] = min(s.look_at.get(message.queue, math.inf), at)
            elif isinstance(message, _Finished):
                finished.append(message)
            elif isinstance(message, _Counted):
                counted.append(message)
            elif isinstance(message, _Release):
                await self._release(message)
            else:
                s.draining = True
                message.reply.set(None)
        if (s.unwritten or s.unwritten_counts) and trio.current_time() >= s.retry_writes_at:
            finished = [*s.unwritten, *finished]
            counted = [*s.unwritten_counts, *counted]
            s.unwritten, s.unwritten_counts = [], []
            s.retry_writes_at = math.inf
        if finished or counted:
            await self._settle(finished, counted)
        if s.draining and not s.running:
            self._idle.set()

    # -- picking -----------------------------------------------------------------------------
    async def _pick(self) -> None:
        s = self._state
        free = self._settings().concurrency - len(s.running)
        now = trio.current_time()
        looks = [q for q, at in s.look_at.items() if at <= now]
        if s.draining or free <= 0 or not looks or self._runners is None:
            return
        async with self.jobs.lock:
            held = self._holds.held
            pick = choose(self.jobs, self.pipeline, looks, held=held, free=free, now=now)
            for queue, at in pick.looks.items():
                if at is None:
                    s.look_at.pop(queue, None)
                else:
                    s.look_at[queue] = at
            if pick.ops:
                try:
                    await self.jobs.write(pick.ops)
                except StorageError as exc:
                    log.warning("outbox.write_failed", error=str(exc), jobs=len(pick.started))
                    for queue in looks:
                        s.look_at[queue] = trio.current_time() + WRITE_RETRY
                    return
        for dead in pick.refused:
            s.counters["dead"] += 1
            alert_dead(dead)
        for job, op in pick.started:
            s.running[job.id] = (job, op)
            s.counters["started"] += 1
            self._runners.start_soon(self._attempt, job, op)

    async def _attempt(self, job: Job, op: Operation) -> None:
        """One attempt of ``job`` (a runner task); its outcome goes to the actor."""
        policy = self._settings().policy(job.operation)
        started = trio.current_time()
        outcome: CallResult | Refusal
        try:
            outcome = await self.pipeline.call(
                attempt_request(job, policy.lane or op.lane, started)
            )
        except Refusal as exc:
            outcome = exc
        except Exception as exc:
            log.exception("outbox.attempt_crashed", job_id=job.id, operation=job.operation)
            outcome = InternalRefusal(f"the attempt failed inside the daemon: {exc!r}")
        duration_ms = (trio.current_time() - started) * 1000
        try:
            await self._mailbox.post(_Finished(job.id, outcome, duration_ms))
        except ActorStopped:
            pass  # stopping: the job stays in flight in storage, in doubt at the next start

    # -- outcomes ----------------------------------------------------------------------------
    async def _settle(self, finished: list[_Finished], counted: list[_Counted]) -> None:
        """Judge and write the outcomes of ``finished``, and the rows ``counted``, in one
        transaction."""
        s = self._state
        settings = self._settings()
        now, wall = trio.current_time(), self.jobs.now()
        ops: list[Op] = []
        moved: list[tuple[Job, Job, float]] = []
        tally = QuotaTally(self._holds.quota)
        async with self.jobs.lock:
            for item in finished:
                entry = s.running.get(item.job_id)
                if entry is None:
                    continue
                job, op = entry
                new, delay = settle(
                    job,
                    op,
                    item.outcome,
                    duration_ms=item.duration_ms,
                    pipeline=self.pipeline,
                    settings=settings,
                    tally=tally,
                    now=wall,
                    rng=self._rng,
                )
                ops.extend(transition_ops(job, new))
                moved.append((job, new, delay))
            for row in counted:
                tally.count(row.source, row.cap, accepted=row.accepted, now=wall)
            ops.extend(tally.puts())
            try:
                await self.jobs.write(ops)
            except StorageError as exc:
                log.warning("outbox.write_failed", error=str(exc), jobs=len(moved))
                s.unwritten.extend(finished)
                s.unwritten_counts.extend(counted)
                s.retry_writes_at = trio.current_time() + WRITE_RETRY
                return
        for job, new, delay in moved:
            del s.running[job.id]
            look = settled(new, delay, now, s.counters)
            if look is not None:
                s.look_at[new.queue] = min(s.look_at.get(new.queue, math.inf), look)
        self._holds.apply(tally)

    async def _release(self, message: _Release) -> None:
        if message.reply.done:
            return
        try:
            quota = await self._holds.release(message.source)
        except StorageError as exc:
            message.reply.fail(exc)
            return
        self._state.look_at[message.source] = trio.current_time()
        message.reply.set(quota)

    # -- upkeep ------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        s = self._state
        retention = self._settings().done_retention
        swept, full = await sweep_done(self.jobs, retention)
        s.counters["swept"] += swept
        s.next_sweep = trio.current_time() + (0.0 if full else self._sweep_interval)
        if not s.look_at:
            # A due notice dropped by a full inbox is caught here: queues found again.
            now = trio.current_time()
            s.look_at.update(dict.fromkeys(self.jobs.queues(), now))
