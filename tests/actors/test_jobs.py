"""The job record and its storage layout: encodings, index keys and the ops of each transition."""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st
from jobs_fixture import make_job

from claykiln.actors.jobs import (
    DEAD_TABLE,
    DONE_TABLE,
    DUE_TABLE,
    HISTORY_KEPT,
    INFLIGHT_TABLE,
    JOB_TABLE,
    KEY_TABLE,
    RETRY_TABLE,
    Attempt,
    Job,
    JobState,
    due_key,
    index_entry,
    new_job_id,
    removal_ops,
    split_due_key,
    split_time_key,
    time_key,
    transition_ops,
)
from claykiln.storage import Delete, Put


def test_a_job_round_trips_through_its_stored_value() -> None:
    """Every field, the history and the result survive to_value / from_value."""
    job = make_job(
        attempts=2,
        deferrals=1,
        boot=7,
        history=(Attempt(1.0, "status 503", burned=True, error="boom", duration_ms=12.5),),
        reason="max_attempts",
        error="boom",
        dead_at=3.0,
        result={"status": 200, "attempts": 1},
    )
    assert Job.from_value(job.id, job.to_value()) == job


def test_a_malformed_value_reads_as_none() -> None:
    """Garbage under a job id is not a job (the caller logs it) and never raises."""
    assert Job.from_value("x", {"op": "push_row"}) is None
    assert Job.from_value("x", [1, 2]) is None
    assert Job.from_value("x", {**make_job().to_value(), "state": "haunted"}) is None


def test_job_ids_sort_by_creation_time_and_never_repeat() -> None:
    """Ids are 32 hex digits, the first 12 the creation milliseconds."""
    ids = [new_job_id(1000.0 + n) for n in range(50)]
    assert ids == sorted(ids)
    assert len({new_job_id(1.0) for _ in range(1000)}) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@given(
    queue=st.text(
        alphabet=st.characters(min_codepoint=1, blacklist_categories=("Cs",)), min_size=1
    ),
    due=st.floats(min_value=0, max_value=4e9),
)
def test_due_keys_split_back_and_sort_by_time_within_a_queue(queue: str, due: float) -> None:
    """A due key gives back its queue, time and id; later due times sort after earlier ones."""
    job_id = new_job_id(due)
    raw = due_key(queue, due, job_id)
    got_queue, micros_, got_id = split_due_key(raw)
    assert (got_queue, got_id) == (queue, job_id)
    assert micros_ == int(due * 1_000_000)
    assert due_key(queue, due, job_id) < due_key(queue, due + 1, job_id)


def test_time_keys_split_back() -> None:
    """Dead and done index keys give back their time and job id."""
    raw = time_key(12.5, "abc")
    assert split_time_key(raw) == (12_500_000, "abc")


def test_each_state_has_its_one_index_entry() -> None:
    """pending, retry_wait, in_flight, dead and done each live in their own index."""
    job = make_job()
    tables = {
        JobState.PENDING: DUE_TABLE,
        JobState.RETRY_WAIT: RETRY_TABLE,
        JobState.IN_FLIGHT: INFLIGHT_TABLE,
        JobState.DEAD: DEAD_TABLE,
        JobState.DONE: DONE_TABLE,
    }
    for state, table in tables.items():
        changed = attrs.evolve(job, state=state, boot=3, dead_at=5.0, done_at=6.0)
        assert index_entry(changed)[0] == table


def test_a_new_indexed_job_writes_its_record_key_and_due_entry() -> None:
    """Submit: the record, the key -> id entry, the due entry; nothing deleted."""
    job = make_job()
    ops = transition_ops(None, job)
    assert Put(JOB_TABLE, job.id.encode(), job.to_value()) in ops
    assert Put(KEY_TABLE, b"order-1", job.id) in ops
    assert Put(DUE_TABLE, due_key(job.queue, job.due_at, job.id), b"") in ops
    assert not [op for op in ops if isinstance(op, Delete)]


def test_a_transition_moves_the_index_entry() -> None:
    """pending -> in_flight drops the due entry and adds the in-flight one."""
    job = make_job()
    flying = attrs.evolve(job, state=JobState.IN_FLIGHT, boot=4)
    ops = transition_ops(job, flying)
    assert Delete(DUE_TABLE, due_key(job.queue, job.due_at, job.id)) in ops
    assert Put(INFLIGHT_TABLE, job.id.encode(), 4) in ops
    assert not [op for op in ops if getattr(op, "table", None) == KEY_TABLE]


def test_removal_deletes_the_record_its_entry_and_its_key() -> None:
    """Sweep and purge leave nothing of the job behind."""
    job = make_job(state=JobState.DONE, done_at=9.0)
    ops = removal_ops(job)
    assert Delete(JOB_TABLE, job.id.encode()) in ops
    assert Delete(DONE_TABLE, time_key(9.0, job.id)) in ops
    assert Delete(KEY_TABLE, b"order-1") in ops


def test_history_keeps_the_newest_entries() -> None:
    """A job keeps at most HISTORY_KEPT entries, dropping the oldest."""
    job = make_job()
    for n in range(HISTORY_KEPT + 5):
        job = job.with_entry(Attempt(float(n), "status 503", burned=True))
    assert len(job.history) == HISTORY_KEPT
    assert job.history[0].at == 5.0 and job.history[-1].at == HISTORY_KEPT + 4


def test_the_wire_views_name_the_job() -> None:
    """to_wire carries the request and history; summary leaves them out."""
    job = make_job(history=(Attempt(1.0, "status 400", burned=True, error="bad"),))
    wire = job.to_wire(now=1_700_000_010.0)
    assert wire["job_id"] == job.id and wire["request"]["json"] == {"n": 1}
    assert wire["history"][0]["outcome"] == "status 400"
    assert wire["age"] == 10.0
    summary = job.summary(now=1_700_000_010.0)
    assert "request" not in summary and "history" not in summary
