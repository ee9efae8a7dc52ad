"""A job to start from, shared by the outbox's tests."""

from __future__ import annotations

import attrs

from claykiln.actors.jobs import Job, JobState, new_job_id


def make_job(**changes: object) -> Job:
    """A pending push to webhook w1 (key ``order-1``), with ``changes`` applied."""
    job = Job(
        id=new_job_id(1_700_000_000.0),
        operation="push_row",
        request={"path_params": {"webhook_id": "w1"}, "json": {"n": 1}},
        key="order-1",
        fingerprint="f" * 64,
        queue="clay:/v3/sources/webhook/w1",
        state=JobState.PENDING,
        created_at=1_700_000_000.0,
        due_at=1_700_000_000.5,
        max_attempts=5,
        source="clay:/v3/sources/webhook/w1",
        indexed=True,
    )
    return attrs.evolve(job, **changes)
