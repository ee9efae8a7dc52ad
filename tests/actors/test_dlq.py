"""The dead-letter queue over real parts (outbox_fixture.py): paging and filters, retry, kill,
purge and an export that round-trips into new jobs."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from outbox_fixture import outbox_rig

from claykiln.actors.call import CallRequest
from claykiln.actors.dlq import DeadFilter
from claykiln.actors.errors import BadRequestRefusal
from claykiln.actors.jobs import Job, JobState, transition_ops
from claykiln.actors.outbox import PreparedJob
from claykiln.actors.upstream_http import NO_JSON
from claykiln.daemon.simulator import Faults, open_simulator


def fast_simulator() -> Any:
    return open_simulator(webhook_rate=1000, webhook_burst=1000)


def push(webhook: str, row: Any, operation: str = "push_row") -> CallRequest:
    return CallRequest(operation=operation, path_params={"webhook_id": webhook}, json=row)


async def bury(rig: Any, request: CallRequest, *, reason: str, dead_at: float) -> Job:
    """A dead job written straight through the storage layer (as the scheduler leaves one)."""
    prepared = rig.outbox.prepare(request)
    assert isinstance(prepared, PreparedJob)
    job = attrs.evolve(
        prepared.job, state=JobState.DEAD, reason=reason, dead_at=dead_at, attempts=1
    )
    await rig.jobs.write(transition_ops(None, job))
    return job


def resubmit(item: dict[str, Any]) -> CallRequest:
    """An exported dead job as a submit (what ``kiln submit --from`` does with a line)."""
    req = item["request"]
    return CallRequest(
        operation=item["operation"],
        path_params=req.get("path_params") or {},
        query=req.get("query"),
        json=req.get("json", NO_JSON),
        body=req.get("body"),
        headers=req.get("headers") or {},
        idempotency_key=item["idempotency_key"],
    )


async def test_pages_follow_the_cursor_and_filters_apply(tmp_path: Path) -> None:
    """Oldest first; pages of 7 cover all 20; operation, reason and age filters select."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            now = rig.jobs.now()
            jobs = []
            for n in range(20):
                reason = "rejected" if n % 2 else "max_attempts"
                op = "push_keyed" if n % 5 == 0 else "push_row"
                jobs.append(
                    await bury(rig, push("w1", {"n": n}, op), reason=reason, dead_at=now - 100 + n)
                )
            seen: list[str] = []
            cursor = None
            while True:
                page = rig.dlq.page(DeadFilter(), after=cursor, limit=7)
                seen.extend(item["job_id"] for item in page["items"])
                cursor = page["next"]
                if cursor is None:
                    break
            rejected = rig.dlq.page(DeadFilter(reason="rejected"), after=None, limit=100)
            keyed = rig.dlq.page(DeadFilter(operation="push_keyed"), after=None, limit=100)
            old = rig.dlq.page(DeadFilter(older_than=95), after=None, limit=100)
            young = rig.dlq.page(DeadFilter(newer_than=90.5), after=None, limit=100)
            size = rig.dlq.size()
    assert seen == [j.id for j in jobs] and size == 20
    assert len(rejected["items"]) == 10
    assert {i["operation"] for i in keyed["items"]} == {"push_keyed"} and len(keyed["items"]) == 4
    assert [i["job_id"] for i in old["items"]] == [j.id for j in jobs[:6]]
    assert [i["job_id"] for i in young["items"]] == [j.id for j in jobs[10:]]
    with pytest.raises(BadRequestRefusal):
        rig.dlq.page(DeadFilter(), after="not-a-cursor", limit=7)


async def test_a_retried_job_keeps_its_key_and_completes(tmp_path: Path) -> None:
    """Dead after a final 401; the webhook token is fixed; retry: pending, attempts reset,
    the same key, then done; its history says what happened."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            sim.sim.configure_webhook("w9", token="t")
            prepared = rig.outbox.prepare(push("w9", {"n": 1}))
            answer = await rig.outbox.submit(prepared)  # type: ignore[arg-type]
            await rig.until(lambda: rig.counts()["dead"] == 1)
            sim.sim.configure_webhook("w9")  # the operator fixed the token at Clay
            result = await rig.dlq.retry(job_id=answer["job_id"])
            await rig.until(lambda: rig.counts()["done"] == 1)
            job = rig.jobs.get(answer["job_id"])
    assert result["retried"] == 1
    assert job is not None and job.state is JobState.DONE and job.key == answer["idempotency_key"]
    assert [e.outcome for e in job.history] == ["status 401", "retried", "status 200"]
    assert sim.sim.row_count("w9") == 1


async def test_a_filtered_retry_is_paced(tmp_path: Path) -> None:
    """Retrying every rejected job spreads their due times at the given rate; others stay."""
    with trio.fail_after(30):
        async with fast_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                await rig.scheduler.drain(0)  # nothing starts: look at the due times
                now = rig.jobs.now()
                for n in range(10):
                    reason = "rejected" if n < 6 else "in_doubt"
                    await bury(rig, push("w1", {"n": n}), reason=reason, dead_at=now - 10)
                result = await rig.dlq.retry(filters=DeadFilter(reason="rejected"), rate=5.0)
                counts = rig.counts()
                dues = sorted(
                    j.due_at for j in (rig.jobs.get(i) for i in _pending_ids(rig)) if j is not None
                )
            sim.sim.clear_faults()
    assert result["retried"] == 6 and counts["dead"] == 4 and counts["pending"] == 6
    gaps = [b - a for a, b in itertools.pairwise(dues)]
    assert all(abs(g - 0.2) < 1e-6 for g in gaps)


def _pending_ids(rig: Any) -> list[str]:
    from claykiln.actors.jobs import DUE_TABLE, batch_ids

    return batch_ids(rig.store.items(DUE_TABLE), DUE_TABLE)


async def test_kill_moves_a_waiting_job_to_dead_and_refuses_others(tmp_path: Path) -> None:
    """A job due later is killed (reason killed); killing it again, or a job in flight, is
    refused with its state."""
    with trio.fail_after(30):
        async with fast_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                later = rig.outbox.prepare(push("w1", {"n": 1}), not_before=rig.jobs.now() + 60)
                waiting = await rig.outbox.submit(later)  # type: ignore[arg-type]
                flying = await rig.outbox.submit(rig.outbox.prepare(push("w2", {"n": 2})))  # type: ignore[arg-type]
                await sim.sim.wait_until(lambda s: s.stats.hanging == 1)
                assert (await rig.dlq.kill(job_id=waiting["job_id"])) == {"killed": 1}
                with pytest.raises(BadRequestRefusal, match="dead"):
                    await rig.dlq.kill(job_id=waiting["job_id"])
                with pytest.raises(BadRequestRefusal, match="in_flight") as info:
                    await rig.dlq.kill(job_id=flying["job_id"])
                killed = rig.jobs.get(waiting["job_id"])
            sim.sim.clear_faults()
    assert killed is not None and (killed.state, killed.reason) == (JobState.DEAD, "killed")
    assert info.value.details == {"state": "in_flight"}


async def test_kill_by_queue_takes_only_that_queue(tmp_path: Path) -> None:
    """Killing the waiting jobs of one webhook source leaves the other source's jobs."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            later = rig.jobs.now() + 60
            for n in range(6):
                prepared = rig.outbox.prepare(push(f"w{n % 2}", {"n": n}), not_before=later)
                await rig.outbox.submit(prepared)  # type: ignore[arg-type]
            result = await rig.dlq.kill(queue="clay:/v3/sources/webhook/w0")
            counts = rig.counts()
    assert result == {"killed": 3} and (counts["dead"], counts["pending"]) == (3, 3)


async def test_purge_removes_only_what_the_filter_selects(tmp_path: Path) -> None:
    """A dry run counts; a confirmed purge deletes the matching dead jobs and their keys."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            now = rig.jobs.now()
            kept = []
            for n in range(8):
                reason = "rejected" if n < 5 else "in_doubt"
                job = await bury(rig, push("w1", {"n": n}), reason=reason, dead_at=now - 5)
                if n >= 5:
                    kept.append(job.id)
            dry = await rig.dlq.purge(DeadFilter(reason="rejected"), confirm=False)
            assert rig.dlq.size() == 8
            done = await rig.dlq.purge(DeadFilter(reason="rejected"), confirm=True)
            left = rig.dlq.page(DeadFilter(), after=None, limit=100)["items"]
            again = rig.outbox.prepare(push("w1", {"n": 0}))  # its key was purged too
    assert dry == {"matched": 5, "purged": 0, "dry_run": True}
    assert done["purged"] == 5
    assert sorted(i["job_id"] for i in left) == sorted(kept)
    assert isinstance(again, PreparedJob)


async def test_an_export_round_trips_into_jobs_that_complete(tmp_path: Path) -> None:
    """Export the DLQ in full, purge it, submit the exported requests: every row reaches Clay,
    under the keys it had."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            now = rig.jobs.now()
            for n in range(5):
                op = "push_keyed" if n == 4 else "push_row"
                await bury(rig, push("w3", {"n": n}, op), reason="in_doubt", dead_at=now)
            exported = rig.dlq.page(DeadFilter(), after=None, limit=100, full=True)["items"]
            await rig.dlq.purge(DeadFilter(), confirm=True)
            for item in exported:
                prepared = rig.outbox.prepare(resubmit(item))
                assert isinstance(prepared, PreparedJob)
                await rig.outbox.submit(prepared)
            await rig.until(lambda: rig.counts()["done"] == 5)
    assert sorted(r.body["n"] for r in sim.sim.rows("w3")) == [0, 1, 2, 3, 4]
    keys = {item["idempotency_key"] for item in exported}
    assert {r.body.get("kiln_key") for r in sim.sim.rows("w3")} - {None} <= keys
    assert len(exported[0]["history"]) == 0 and exported[0]["reason"] == "in_doubt"
