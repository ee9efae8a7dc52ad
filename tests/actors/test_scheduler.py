"""The scheduler actor over real parts (outbox_fixture.py) and the simulator on 127.0.0.1:
retries, the dead-letter rules, in-doubt jobs after a crash, holds, outages and the sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import structlog
import trio
from outbox_fixture import SETTINGS, outbox_rig

from claykiln.actors.breaker_types import BreakerPolicy
from claykiln.actors.call import CallRequest
from claykiln.actors.gate import RatePolicy
from claykiln.actors.jobs import Job, JobState
from claykiln.actors.outbox import PreparedJob
from claykiln.daemon.simulator import Faults, open_simulator


def fast_simulator() -> Any:
    """The simulator without Clay's pacing (tests about pacing set it themselves)."""
    return open_simulator(webhook_rate=1000, webhook_burst=1000)


def push(webhook: str, row: Any, operation: str = "push_row", **kw: Any) -> CallRequest:
    return CallRequest(operation=operation, path_params={"webhook_id": webhook}, json=row, **kw)


async def submit(rig: Any, request: CallRequest, **kw: Any) -> Job:
    prepared = rig.outbox.prepare(request, **kw)
    assert isinstance(prepared, PreparedJob)
    answer = await rig.outbox.submit(prepared)
    job = rig.jobs.get(answer["job_id"])
    assert job is not None
    return job


def final(rig: Any, job: Job) -> Job:
    got = rig.jobs.get(job.id)
    assert got is not None
    return got


async def test_jobs_reach_clay_and_are_done(tmp_path: Path) -> None:
    """Twenty pushes: each row stored once, each job done with one attempt."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            jobs = [await submit(rig, push("w1", {"n": n})) for n in range(20)]
            await rig.until(lambda: rig.counts()["done"] == 20)
            done = [final(rig, job) for job in jobs]
    assert sim.sim.row_count("w1") == 20
    assert {(j.state, j.attempts) for j in done} == {(JobState.DONE, 1)}
    assert sorted(r.body["n"] for r in sim.sim.rows("w1")) == list(range(20))


async def test_a_5xx_burst_is_retried_with_backoff(tmp_path: Path) -> None:
    """Two 503s, then the row lands: done after three attempts, the 503s in its history."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            sim.sim.set_faults(Faults(burst=2, error_status=503, path_prefix="/v3/"))
            job = await submit(rig, push("w1", {"n": 1}))
            await rig.until(lambda: rig.counts()["done"] == 1)
            done = final(rig, job)
    assert (done.state, done.attempts) == (JobState.DONE, 3)
    assert [e.outcome for e in done.history] == ["status 503", "status 503", "status 200"]
    assert sim.sim.row_count("w1") == 1


async def test_a_poison_job_is_dead_after_one_attempt_and_holds_nobody_back(
    tmp_path: Path,
) -> None:
    """A row Clay answers 400 (no content type: a raw body) is dead at once, reason rejected,
    with the answer in its history; the pushes beside it are done; an alert is logged."""
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            sim.sim.configure_webhook("strict", token="t")  # no token sent: 401, final
            poison = await submit(rig, push("strict", {"n": 0}))
            others = [await submit(rig, push("w1", {"n": n})) for n in range(1, 6)]
            await rig.until(lambda: rig.counts()["done"] == 5 and rig.counts()["dead"] == 1)
            dead = final(rig, poison)
            done = [final(rig, job) for job in others]
    assert (dead.state, dead.reason, dead.attempts) == (JobState.DEAD, "rejected", 1)
    assert dead.history[-1].outcome == "status 401"
    assert all(j.state is JobState.DONE for j in done)
    alerts = [e for e in logs if e["event"] == "dlq.dead"]
    assert alerts and alerts[0]["job_id"] == poison.id and alerts[0]["alert"] is True


async def test_attempts_run_out_on_a_lasting_5xx(tmp_path: Path) -> None:
    """503 every time (the breaker does not open here): dead after max_attempts (3)."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            sim.sim.set_faults(Faults(error_rate=1.0, error_status=503, path_prefix="/v3/"))
            job = await submit(rig, push("w1", {"n": 1}))
            await rig.until(lambda: rig.counts()["dead"] == 1)
            dead = final(rig, job)
    assert (dead.reason, dead.attempts) == ("max_attempts", 3)
    assert sim.sim.stats.received["webhook"] == 3


async def test_a_reset_after_the_row_was_stored(tmp_path: Path) -> None:
    """The row arrived and the answer was lost: a plain push is dead in_doubt (sent once); a
    push that stamps its key (Clay dedupes on it) is retried and done."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            sim.sim.set_faults(Faults(reset="after_store", path_prefix="/v3/"))
            plain = await submit(rig, push("w1", {"n": 1}))
            await rig.until(lambda: rig.counts()["dead"] == 1)
            keyed = await submit(rig, push("w2", {"n": 2}, operation="push_keyed"))
            await rig.until(lambda: final(rig, keyed).attempts >= 1)
            sim.sim.clear_faults()
            await rig.until(lambda: rig.counts()["done"] == 1)
            plain, keyed = final(rig, plain), final(rig, keyed)
    assert (plain.state, plain.reason) == (JobState.DEAD, "in_doubt")
    assert sim.sim.row_count("w1") == 1  # received once, never repeated
    assert keyed.state is JobState.DONE and keyed.attempts >= 2
    assert {r.body["kiln_key"] for r in sim.sim.rows("w2")} == {keyed.key}


async def test_a_crash_leaves_jobs_in_doubt_for_the_next_start(tmp_path: Path) -> None:
    """Jobs in flight when the process dies: at the next start a plain push is dead in_doubt
    (with an alert), a keyed push runs again and is done."""
    path = tmp_path / "s"
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with fast_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(path, sim.url) as rig:
                plain = await submit(rig, push("w1", {"n": 1}))
                keyed = await submit(rig, push("w2", {"n": 2}, operation="push_keyed"))
                await sim.sim.wait_until(lambda s: s.stats.hanging == 2)
            sim.sim.clear_faults()  # the "crash": the rig was cancelled with both in flight
            async with outbox_rig(path, sim.url) as rig:
                await rig.until(lambda: rig.counts()["done"] == 1)
                plain, keyed = final(rig, plain), final(rig, keyed)
                stats = rig.scheduler.stats()
    assert (plain.state, plain.reason) == (JobState.DEAD, "in_doubt")
    assert keyed.state is JobState.DONE
    assert stats["since_start"]["in_doubt_at_start"] == 2 and stats["in_flight"] == 0
    (summary,) = [e for e in logs if e["event"] == "outbox.in_doubt"]
    assert (summary["requeued"], summary["dead"]) == (1, 1)


async def test_an_outage_burns_no_attempts_then_the_backlog_drains(tmp_path: Path) -> None:
    """Clay answers 503 to everything: the breaker opens after a few, jobs wait without
    spending their attempts (probes included), and all are done once Clay is back."""
    breaker = BreakerPolicy(
        consecutive_failures=2,
        volume_threshold=1000,
        reset_timeout=0.2,
        max_reset_timeout=0.4,
        reset_jitter=0.0,
    )
    with trio.fail_after(60):
        async with fast_simulator() as sim:
            sim.sim.set_faults(Faults(outage="unavailable", path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url, breaker=breaker) as rig:
                jobs = [await submit(rig, push("w1", {"n": n})) for n in range(30)]
                await trio.sleep(2.0)  # several open intervals, several probes
                during = [final(rig, job) for job in jobs]
                sim.sim.clear_faults()
                await rig.until(lambda: rig.counts()["done"] == 30, timeout=30)
                after = [final(rig, job) for job in jobs]
                dead = rig.counts()["dead"]
    assert max(j.attempts for j in during) <= 2  # at most the failures that opened it
    assert all(j.state is JobState.DONE for j in after)
    assert dead == 0
    assert sim.sim.row_count("w1") == 30


async def test_jobs_drain_at_the_gate_rate_without_a_429(tmp_path: Path) -> None:
    """The gate at 50/s burst 5 and Clay at the same rate: 60 jobs take about a second, no 429."""
    rate = RatePolicy(per_second=50, burst=5)
    # Clay's bucket is deeper by the jobs that can be in flight at once: a request delayed on
    # its way while both buckets are full loses Clay's bucket the refill the gate's keeps, so
    # equal buckets could meet a 429 on a loaded machine. With the room, Clay holds at least
    # the gate's tokens plus every request on its way, whatever the delays.
    in_flight = SETTINGS.concurrency
    with trio.fail_after(30):
        async with (
            open_simulator(webhook_rate=50, webhook_burst=5 + in_flight) as sim,
            outbox_rig(tmp_path / "s", sim.url, rate=rate) as rig,
        ):
            for n in range(60):  # three sources (each has a cap of 50 rows here)
                await submit(rig, push(f"w{n % 3}", {"n": n}))
            await rig.until(lambda: rig.counts()["done"] == 60)
    assert sim.sim.stats.responses[("webhook", 429)] == 0
    arrivals = sorted(r.received_at for w in ("w0", "w1", "w2") for r in sim.sim.rows(w))
    assert arrivals[-1] - arrivals[0] >= (60 - 5) / 50 * 0.9


async def test_the_lifetime_cap_alerts_then_holds_that_source_only(tmp_path: Path) -> None:
    """A source near its cap (50 here) alerts at 80 % and 95 %; Clay's 403 at its own cap of
    45 dead-letters that job (quota_exhausted) and holds the source's other jobs unburned;
    another source goes on."""
    with trio.fail_after(60), structlog.testing.capture_logs() as logs:
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            sim.sim.configure_webhook("w1", cap=45)
            for n in range(45):
                await submit(rig, push("w1", {"n": n}))
            await rig.until(lambda: rig.counts()["done"] == 45)
            capped = await submit(rig, push("w1", {"n": 45}))
            await rig.until(lambda: rig.counts()["dead"] == 1)
            held = await submit_held(rig)
            other = await submit(rig, push("w2", {"n": 1}))
            await rig.until(lambda: final(rig, other).state is JobState.DONE)
            stats = rig.scheduler.stats()
            capped, held = final(rig, capped), final(rig, held)
    levels = [e["percent"] for e in logs if e["event"] == "quota.near_cap"]
    assert levels == [80]  # 45 of 50: 80 % crossed, 95 % not
    assert (capped.state, capped.reason) == (JobState.DEAD, "quota_exhausted")
    assert held.state is JobState.PENDING and held.attempts == 0
    assert stats["held_sources"] == ["clay:/v3/sources/webhook/w1"]
    (exhausted,) = [e for e in logs if e["event"] == "quota.exhausted"]
    assert exhausted["held_by"] == "clay" and exhausted["severity"] == "critical"


async def submit_held(rig: Any) -> Job:
    """A job for w1 written straight to storage (submit refuses a held source)."""
    prepared = rig.outbox.prepare(push("w1-later", {"n": 99}))
    job = attrs.evolve(
        prepared.job, queue="clay:/v3/sources/webhook/w1", source="clay:/v3/sources/webhook/w1"
    )
    await rig.outbox.submit(PreparedJob(job))
    return job


async def test_done_jobs_are_swept_after_the_retention(tmp_path: Path) -> None:
    """Done jobs older than the retention go, with their keys; a new submit of the same row
    then makes a new job."""
    settings = attrs.evolve(SETTINGS, done_retention=0.2)
    with trio.fail_after(30):
        async with (
            fast_simulator() as sim,
            outbox_rig(tmp_path / "s", sim.url, settings=settings, sweep_interval=0.1) as rig,
        ):
            first = await submit(rig, push("w1", {"n": 1}))
            await rig.until(lambda: rig.counts()["done"] == 1)
            await rig.until(lambda: rig.jobs.get(first.id) is None)
            second = await submit(rig, push("w1", {"n": 1}))
            await rig.until(lambda: rig.counts()["done"] == 1)
    assert second.id != first.id and second.key == first.key
    assert sim.sim.row_count("w1") == 2


async def test_drain_waits_for_the_jobs_in_flight(tmp_path: Path) -> None:
    """drain stops picking and returns once the job in flight is done and written."""
    with trio.fail_after(30):
        async with fast_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            sim.sim.set_faults(Faults(latency=0.3, path_prefix="/v3/"))
            job = await submit(rig, push("w1", {"n": 1}))
            await sim.sim.wait_until(lambda s: s.stats.delayed == 1)
            assert await rig.scheduler.drain(5.0)
            assert final(rig, job).state is JobState.DONE
            later = await submit(rig, push("w1", {"n": 2}))
            await trio.sleep(0.2)
            assert final(rig, later).state is JobState.PENDING
