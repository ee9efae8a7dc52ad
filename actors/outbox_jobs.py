"""The values the outbox's submit side (actors/outbox.py) and the scheduler share: a checked
job, the call arguments a job keeps and the call an attempt makes from them, the answer a submit
gets, and the bookkeeping of a key being written (``Writing``: the submits that came meanwhile
follow its write)."""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

from claykiln.actors.call import CallRequest
from claykiln.actors.errors import InternalRefusal, Refusal, StorageFullRefusal
from claykiln.actors.jobs import Job
from claykiln.actors.upstream import NO_JSON
from claykiln.storage import StorageError, StoreFull

__all__ = [
    "PreparedJob",
    "Settle",
    "Writing",
    "attempt_request",
    "job_answer",
    "storage_refusal",
    "stored_request",
]


class Settle(Protocol):
    """What ``submit_later`` settles (the RPC layer's ``Later``): one answer or one refusal."""

    def answer(self, result: Any) -> None: ...

    def refuse(self, error: BaseException) -> None: ...


@attrs.define(eq=False)
class Writing:
    """A job being written now under its key: submits of the key that came meanwhile are
    answered from it once the write ended (``followers``), or wait for ``ended`` in a task."""

    job: Job
    followers: list[Settle] = attrs.Factory(list)
    _ended: trio.Event | None = None

    async def wait(self) -> None:
        if self._ended is None:
            self._ended = trio.Event()
        await self._ended.wait()

    def end(self, answer: dict[str, Any] | None, error: Refusal | None) -> int:
        """Answer the followers (``answer`` with ``existing: true``, else a copy of ``error``)
        and wake the tasks waiting; returns how many followers got the existing job."""
        for follower in self.followers:
            if error is not None:
                follower.refuse(type(error)(error.message))
            else:
                assert answer is not None
                follower.answer({**answer, "existing": True})
        if self._ended is not None:
            self._ended.set()
        return len(self.followers) if error is None else 0


@attrs.frozen
class PreparedJob:
    """A checked submit: the job as it will be written (state pending)."""

    job: Job

    @property
    def key(self) -> str:
        return self.job.key


def stored_request(request: CallRequest, deadline_ms: float | None) -> dict[str, Any]:
    """The call arguments a job keeps (what ``attempt_request`` rebuilds a call from)."""
    out: dict[str, Any] = {}
    if request.path_params:
        out["path_params"] = dict(request.path_params)
    if request.query:
        out["query"] = dict(request.query)
    if request.json is not NO_JSON:
        out["json"] = request.json
    if request.body is not None:
        out["body"] = bytes(request.body)
    if request.headers:
        out["headers"] = dict(request.headers)
    if request.lane is not None:
        out["lane"] = request.lane
    if deadline_ms is not None:
        out["deadline_ms"] = deadline_ms
    return out


def attempt_request(job: Job, lane: str, now: float) -> CallRequest:
    """The call one attempt of ``job`` makes: its stored arguments, in ``lane`` unless the job
    names its own, with a deadline ``deadline_ms`` after ``now`` (trio time) if it has one."""
    req = job.request
    deadline_ms = req.get("deadline_ms")
    return CallRequest(
        operation=job.operation,
        path_params=dict(req.get("path_params") or {}),
        query=req.get("query"),
        json=req.get("json", NO_JSON),
        body=req.get("body"),
        headers=dict(req.get("headers") or {}),
        lane=req.get("lane") or lane,
        deadline=now + deadline_ms / 1000 if deadline_ms else None,
        idempotency_key=job.key,
    )


def job_answer(job: Job, *, existing: bool) -> dict[str, Any]:
    """What ``submit`` answers for ``job``."""
    return {
        "job_id": job.id,
        "state": job.state.value,
        "existing": existing,
        "idempotency_key": job.key,
        "due_at": job.due_at,
    }


def storage_refusal(exc: StorageError) -> Refusal:
    if isinstance(exc, StoreFull):
        return StorageFullRefusal(f"the job was not saved: {exc}")
    return InternalRefusal(f"the job was not saved: {exc}")
