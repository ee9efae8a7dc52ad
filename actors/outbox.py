"""The submit side of the durable outbox: check a job, write it durably, then acknowledge it.

Card
- owns: the idempotency keys being written right now (key -> an Event set once the write ended),
  so two submits with one key make one job; nothing else (jobs live in storage, ``JobStore``).
- a coordinator, not an actor: ``prepare`` runs on the connection reader (no await, no task);
  ``submit``, ``submit_many`` and ``bury`` run in the request's task.
- ``prepare(request)``: refuses at once what can never succeed (an unknown operation, bad path
  parameters or headers, an unknown lane, a row Clay would refuse: ``check_row``; a push to a
  webhook source held at Clay's lifetime cap) with ``bad_request`` / ``unknown_operation``;
  names the job with its key (the one given, the derived one where the operation derives keys,
  else ``job:<id>``), stamps the key into the row's ``key_field``; answers a key that already
  has a job with that job (``existing: true``), or ``idempotency_mismatch`` when the key was
  used for another request.
- ``submit_later(prepared, later)`` (on the reader, no task): queues the job and its index
  entries with the writer (``write_then``: group commit, concurrent submits share one fsync);
  the commit tells the scheduler the job's queue is due and settles ``later`` with ``{job_id,
  state, existing, idempotency_key, due_at}`` (False when the writer's inbox is full: the
  caller runs ``submit`` in a task instead). ``submit(prepared)`` does the same in a task;
  ``submit_many`` writes a whole batch in one transaction and answers per item.
- keys: a submit whose key is being written now is answered with that job once it is on disk
  (``existing: true``; the write's error if it failed), or at once with
  ``idempotency_mismatch`` for another request; one in a task waits for the write's end.
- ``bury(request, error)``: keeps a ``call`` that failed (``on_failure = "dlq"``) as a dead job.
- ``note_call(op, request, answer)``: a ``call``'s row counts against its webhook source's
  lifetime cap like a job's (told to the scheduler, which owns the counts).
- on failure: a full store is ``storage_full``, another storage error ``internal``; nothing was
  acknowledged, so nothing is lost. Cancelled while writing, the job may still be committed
  (the writer does not abandon a queued write); it was not acknowledged.

The values it shares with the scheduler (a checked job, what a job keeps of its request, the
call an attempt makes, a submit's answer) are in actors/outbox_jobs.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from claykiln.actors.call import CallRequest, Operation
from claykiln.actors.errors import (
    BadRequestRefusal,
    InternalRefusal,
    Refusal,
)
from claykiln.actors.idempotency_keys import derived_key, fingerprint, stamp_key_field
from claykiln.actors.idempotency_record import mismatch_refusal
from claykiln.actors.jobs import Attempt, Job, JobState, new_job_id, transition_ops
from claykiln.actors.jobs_policy import RECORD_LIMIT, JobPolicy, OutboxSettings, check_row
from claykiln.actors.jobs_quota import source_name
from claykiln.actors.jobs_store import JobStore, alert_dead
from claykiln.actors.log import get_logger
from claykiln.actors.outbox_jobs import (
    PreparedJob,
    Settle,
    Writing,
    attempt_request,
    job_answer,
    storage_refusal,
    stored_request,
)
from claykiln.actors.pipeline import CallPipeline
from claykiln.actors.upstream import render_path
from claykiln.storage import Op, StorageError

__all__ = ["Outbox", "PreparedJob", "attempt_request"]

log = get_logger("claykiln.outbox")

DueNotice = Callable[[str, float], None]
"""Tells the scheduler that ``queue`` holds a job due at wall time ``due_at``."""
RowCount = Callable[..., None]
"""Tells the scheduler a row reached a webhook source: ``(source, cap, accepted=...)``."""


class Outbox:
    """Accepts jobs durably; see the module card."""

    def __init__(
        self,
        jobs: JobStore,
        pipeline: CallPipeline,
        settings: Callable[[], OutboxSettings],
        notify: DueNotice,
        *,
        held: Callable[[str], bool] | None = None,
        counted: RowCount | None = None,
    ) -> None:
        self.jobs = jobs
        self.pipeline = pipeline
        self._settings = settings
        self._notify = notify
        self._held = held  # the scheduler's view of held sources (None: read storage)
        self._counted = counted  # where a call's rows are counted (the scheduler)
        self._writing: dict[str, Writing] = {}
        self.accepted = 0  # jobs written since start
        self.existing = 0  # submits answered with the job their key already had

    # -- on the connection reader ------------------------------------------------------------
    def prepare(
        self,
        request: CallRequest,
        *,
        not_before: float | None = None,
        deadline_ms: float | None = None,
    ) -> PreparedJob | dict[str, Any]:
        """A checked job to write, or the answer of a key that already has one (see the card).

        Raises ``BadRequestRefusal``, ``UnknownOperationRefusal``, ``IdempotencyMismatchRefusal``.
        """
        op = self.pipeline.operation(request.operation)
        settings = self._settings()
        policy = settings.policy(op.name)
        path = render_path(op.path, request.path_params)
        check_row(policy, op.name, request.json, request.body, request.headers)
        self._check_lane(request.lane)
        fp = fingerprint(op.name, request.path_params, request.query, request.json, request.body)
        now = self.jobs.now()
        job_id = new_job_id(now)
        key = request.idempotency_key
        if key is None and policy.derive_key:
            key = derived_key(fp)
        indexed = key is not None
        if indexed:
            assert key is not None
            found = self._existing(key, fp)
            if found is not None:
                return found
        else:
            key = f"job:{job_id}"
        if policy.key_field is not None:
            stamped = stamp_key_field(request.json, policy.key_field, key, operation=op.name)
            request = attrs.evolve(request, json=stamped)
        source = None
        if policy.webhook is not None:
            source = source_name(op.upstream, path)
            self._check_source(op, source)
        due = now if not_before is None else max(now, not_before)
        job = Job(
            id=job_id,
            operation=op.name,
            request=stored_request(request, deadline_ms),
            key=key,
            fingerprint=fp,
            queue=source or op.name,
            state=JobState.PENDING,
            created_at=now,
            due_at=due,
            max_attempts=policy.max_attempts,
            source=source,
            indexed=indexed,
        )
        return PreparedJob(job)

    def _existing(self, key: str, fp: str) -> dict[str, Any] | None:
        """The answer for a key that already has a job; raises a mismatch for another request."""
        job = self.jobs.job_for_key(key)
        if job is None:
            return None
        if job.fingerprint != fp:
            raise mismatch_refusal(key, job.fingerprint, fp)
        self.existing += 1
        return job_answer(job, existing=True)

    def _check_lane(self, lane: str | None) -> None:
        if lane is None:
            return
        views = self.pipeline.lanes.views
        if lane not in views or views[lane].retired:
            known = ", ".join(sorted(n for n, v in views.items() if not v.retired))
            msg = f"submit: unknown lane {lane!r}; configured lanes: {known}"
            raise BadRequestRefusal(msg)

    def _check_source(self, op: Operation, source: str) -> None:
        if self._held is not None and not self._held(source):
            return
        quota = self.jobs.quota(source)
        if quota.held:
            msg = (
                f"{op.name}: the webhook source {source} is held at Clay's lifetime cap "
                f"({quota.rows} rows counted, held by {quota.held_by}); Clay drops every row "
                "it is sent: point the job at a new webhook, or release the source "
                "(kiln quota release) once its cap was raised"
            )
            raise BadRequestRefusal(msg, details={"reason": "quota_exhausted", "source": source})

    def submit_later(self, prepared: PreparedJob, later: Settle) -> bool:
        """Queue the job's durable write; its commit settles ``later`` (see the card). False
        when the writer's inbox is full (nothing queued). Raises ``IdempotencyMismatchRefusal``
        (the key is being written for another request), ``StorageFullRefusal`` /
        ``InternalRefusal`` (the writer refused the write at once)."""
        job = prepared.job
        if job.indexed:
            writing = self._writing.get(job.key)
            if writing is not None:
                if writing.job.fingerprint != job.fingerprint:
                    raise mismatch_refusal(job.key, writing.job.fingerprint, job.fingerprint)
                writing.followers.append(later)
                return True

        def committed(error: StorageError | None) -> None:
            try:
                self._committed(job, later, error)
            except Exception as exc:  # a bug: the caller hears of it, the writer goes on
                later.refuse(exc)

        try:
            queued = self.jobs.writer.write_then(transition_ops(None, job), committed)
        except StorageError as exc:
            raise storage_refusal(exc) from exc
        if queued and job.indexed:
            self._writing[job.key] = Writing(job)
        return queued

    def _committed(self, job: Job, later: Settle, error: StorageError | None) -> None:
        """The writer's end of ``submit_later`` (in its task): acknowledge or refuse."""
        writing = self._writing.pop(job.key, None) if job.indexed else None
        if error is not None:
            refusal = storage_refusal(error)
            later.refuse(refusal)
            if writing is not None:
                writing.end(None, refusal)
            return
        self.accepted += 1
        if job.waiting:
            self._notify(job.queue, job.due_at)
        answer = job_answer(job, existing=False)
        later.answer(answer)
        if writing is not None:
            self.existing += writing.end(answer, None)

    # -- in the request's task ---------------------------------------------------------------
    async def submit(self, prepared: PreparedJob) -> dict[str, Any]:
        """Write the job durably, then answer (see the card)."""
        (answer,) = await self.submit_many([prepared])
        if isinstance(answer, Refusal):
            raise answer
        return answer

    async def submit_many(
        self, items: Sequence[PreparedJob | dict[str, Any] | Refusal]
    ) -> list[dict[str, Any] | Refusal]:
        """Write every ``PreparedJob`` of ``items`` in one durable transaction; answer per item
        (answers and refusals made by ``prepare`` pass through). Jobs of one key share the
        first one's job; a key another submit is writing waits for that write. A storage
        failure fails every job of the batch (``storage_full`` / ``internal``)."""
        keys = {item.key for item in items if isinstance(item, PreparedJob) and item.job.indexed}
        for key in keys:
            while (writing := self._writing.get(key)) is not None:
                await writing.wait()
        return await self._write_batch(items)

    async def _write_batch(
        self, items: Sequence[PreparedJob | dict[str, Any] | Refusal]
    ) -> list[dict[str, Any] | Refusal]:
        answers: list[dict[str, Any] | Refusal] = []
        claimed: dict[str, Job] = {}
        ops: list[Op] = []
        written: list[tuple[int, Job]] = []
        for item in items:
            if not isinstance(item, PreparedJob):
                answers.append(item)
                continue
            job = item.job
            if job.indexed:
                try:
                    earlier = claimed.get(job.key)
                    if earlier is not None:
                        if earlier.fingerprint != job.fingerprint:
                            raise mismatch_refusal(job.key, earlier.fingerprint, job.fingerprint)
                        answers.append(job_answer(earlier, existing=True))
                        continue
                    found = self._existing(job.key, job.fingerprint)
                except Refusal as exc:
                    answers.append(exc)
                    continue
                if found is not None:  # written by another submit while this one waited
                    answers.append(found)
                    continue
                claimed[job.key] = job
            ops.extend(transition_ops(None, job))
            written.append((len(answers), job))
            answers.append(job_answer(job, existing=False))
        if not ops:
            return answers
        mine = {key: Writing(job) for key, job in claimed.items()}
        self._writing.update(mine)
        error: Refusal = InternalRefusal("the job's write was interrupted; submit it again")
        saved = False
        try:
            await self.jobs.write(ops)
            saved = True
        except StorageError as exc:
            error = storage_refusal(exc)
            for index, _ in written:
                answers[index] = type(error)(error.message)
        finally:
            for key, writing in mine.items():
                del self._writing[key]
                if saved:
                    self.existing += writing.end(job_answer(writing.job, existing=False), None)
                else:
                    writing.end(None, error)
        if not saved:
            return answers
        self.accepted += len(written)
        for _, job in written:
            if job.waiting:
                self._notify(job.queue, job.due_at)
        return answers

    async def bury(
        self, request: CallRequest, error: Refusal, *, attempts: int, duration_ms: float
    ) -> str:
        """Keep a failed ``call`` as a dead job (reason ``call_failed``) with the error as its
        one history entry; answer its job id (the existing job's when its key has one).
        Raises ``StorageFullRefusal`` / ``InternalRefusal`` when it could not be written."""
        prepared = self.prepare(request)
        if not isinstance(prepared, PreparedJob):
            return str(prepared["job_id"])
        now = self.jobs.now()
        text = f"{error.code}: {error.message}"[:300]
        entry = Attempt(now, error.code, burned=True, error=text, duration_ms=duration_ms)
        dead = prepared.job.with_entry(
            entry,
            state=JobState.DEAD,
            attempts=max(1, attempts),
            dead_at=now,
            reason="call_failed",
            error=text,
        )
        (answer,) = await self.submit_many([PreparedJob(dead)])
        if isinstance(answer, Refusal):
            raise answer
        if not answer["existing"]:
            alert_dead(dead)
        return str(answer["job_id"])

    def note_call(self, op: Operation, request: CallRequest, answer: Mapping[str, Any]) -> None:
        """Count the row a ``call`` of ``op`` pushed (a 2xx, not a replay or a fallback) against
        its webhook source's lifetime cap, and Clay's 403 at the cap as one; nothing for an
        operation without webhook rules."""
        rules = self._settings().policy(op.name).webhook
        if rules is None or self._counted is None:
            return
        if answer.get("replayed") or answer.get("fallback") or answer.get("coalesced"):
            return
        status = answer.get("status")
        if not isinstance(status, int):
            return
        source = source_name(op.upstream, render_path(op.path, request.path_params))
        if 200 <= status < 300:
            self._counted(source, rules.lifetime_rows, accepted=True)
        elif status == 403 and RECORD_LIMIT in str(answer.get("body", "")).lower():
            self._counted(source, rules.lifetime_rows, accepted=False)

    def stats(self) -> dict[str, Any]:
        """For ``status``: jobs accepted and key hits since start."""
        return {"accepted": self.accepted, "existing": self.existing}

    @staticmethod
    def policy_lane(op: Operation, policy: JobPolicy) -> str:
        """The lane a job of ``op`` runs in: the policy's, else the operation's."""
        return policy.lane or op.lane
