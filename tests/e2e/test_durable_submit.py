"""The durable outbox end to end: real daemon processes, the Clay simulator, real LMDB.

What Clay received is counted at the simulator (requests per kind, rows per webhook, answers
per status); what the daemon decided is read through its own methods (status, jobs.get,
dlq.list, quota.list) and its JSON log.
"""

from __future__ import annotations

import signal
from typing import Any

import trio
from kiln_harness import API_KEY
from outbox_harness import Factory, outbox_config, outbox_status, push, wait_for

from claykiln.daemon import BadRequest, BreakerOpen, TrioClient, UpstreamError
from claykiln.daemon.simulator import (
    Faults,
    RunningSimulator,
    SimSettings,
    Simulator,
    open_simulator,
)


async def started(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> Any:
    proc = kiln(outbox_config(simulator.url, **kw))
    await proc.start()
    return proc


async def test_submits_are_acknowledged_then_reach_clay_once(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Twenty submits answer pending jobs; each row reaches Clay once; the jobs are done with
    one attempt; submitting a row again answers the same job."""
    proc = await started(kiln, simulator)
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            answers = [await client.submit("push_row", **push("w1", {"n": n})) for n in range(20)]
            await wait_for(client, lambda s: s["done"] == 20)
            again = await client.submit("push_row", **push("w1", {"n": 3}))
            job = await client.job(answers[3]["job_id"])
            done = await client.jobs("done", limit=5)
    assert {a["state"] for a in answers} == {"pending"} and not any(a["existing"] for a in answers)
    assert simulator.sim.row_count("w1") == 20
    assert (again["existing"], again["job_id"], again["state"]) == (True, job["job_id"], "done")
    assert (job["state"], job["attempts"], job["history"][-1]["outcome"]) == (
        "done",
        1,
        "status 200",
    )
    assert len(done["items"]) == 5 and done["next"] is not None
    assert await proc.stop() == 0


async def test_a_row_that_can_never_succeed_is_refused_at_submit(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Over 100 KB, or JSON that cannot encode: bad_request at once, nothing sent to Clay."""
    proc = await started(kiln, simulator)
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            for row in ({"blob": "x" * 100_001}, {"bytes": b"\x00\x01"}):
                try:
                    await client.submit("push_row", **push("w1", row))
                except BadRequest as exc:
                    assert "push_row" in exc.message
                else:
                    raise AssertionError("a row Clay would refuse was accepted")
            section = await outbox_status(client)
    assert section["pending"] == section["accepted"] == 0
    assert simulator.sim.stats.clay_requests == 0
    assert await proc.stop() == 0


async def test_a_poison_job_is_dead_after_one_attempt_and_holds_nobody_back(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A raw body Clay answers 400 every time is dead after one attempt (reason rejected, its
    answer in the history, an alert); the rows submitted around it are done."""
    proc = await started(kiln, simulator)
    poison = {
        "path_params": {"webhook_id": "w1"},
        "body": b"name,email\nada,ada@example.com\n",
        "headers": {"content-type": "text/csv"},
    }
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            before = [await client.submit("push_row", **push("w1", {"n": n})) for n in range(5)]
            bad = await client.submit("push_raw", **poison)
            after = [await client.submit("push_row", **push("w1", {"n": n})) for n in range(5, 10)]
            await wait_for(client, lambda s: s["done"] == 10 and s["dead"] == 1)
            dead = await client.dlq_get(bad["job_id"])
    assert len(before) == len(after) == 5
    assert (dead["reason"], dead["attempts"]) == ("rejected", 1)
    assert "Content-Type must be application/json" in dead["history"][0]["error"]
    assert simulator.sim.stats.responses[("webhook", 400)] == 1
    (alert,) = proc.events("dlq.dead")
    assert (alert["job_id"], alert["alert"], alert["reason"]) == (bad["job_id"], True, "rejected")
    assert await proc.stop() == 0


async def test_an_outage_burns_no_attempts_and_the_backlog_drains_at_clays_pace(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Clay answers 503 to everything for a while: the breaker opens after five, the jobs wait
    without spending attempts, none is dead; once Clay is back they drain through the gate at
    10/s burst 20 (Clay's own rate in the simulator) with no 429."""
    sim = simulator.sim
    # Clay's bucket is 4 deeper, for the jobs in flight (outbox concurrency): a request delayed
    # on its way while both buckets are full (the drain starts with them full) loses Clay's
    # bucket the refill the gate's keeps, and a run with its processes stalled at random met a
    # 429 at the end of the burst. With the room, Clay's bucket holds at least the gate's tokens
    # plus every request on its way, whatever the delays.
    sim.update_settings(sim.settings.evolve_from_json({"webhook_rate": 10, "webhook_burst": 24}))
    proc = await started(kiln, simulator, rate=10, burst=20, reset="200ms")
    sim.set_faults(Faults(outage="unavailable", path_prefix="/v3/"))
    with trio.fail_after(90):
        async with TrioClient(str(proc.socket)) as client:
            answers = [await client.submit("push_row", **push("w1", {"n": n})) for n in range(50)]
            await trio.sleep(1.5)  # the breaker is open by now
            early = [await client.job(a["job_id"]) for a in answers]
            await trio.sleep(2.0)  # more open intervals and failed probes
            during = await outbox_status(client)
            jobs_during = [await client.job(a["job_id"]) for a in answers]
            sim.clear_faults()
            back = trio.current_time()
            await wait_for(client, lambda s: s["done"] == 50, timeout=60)
            drained = trio.current_time() - back
    assert during["dead"] == 0 and during["done"] == 0
    # Only failures while it opened may burn (a job retried in that instant twice); while it
    # is open, failed probes included, nothing burns.
    assert max(j["attempts"] for j in jobs_during) <= 2
    assert sum(j["attempts"] for j in jobs_during) == sum(j["attempts"] for j in early)
    assert sim.stats.responses[("webhook", 429)] == 0
    assert sim.row_count("w1") == 50
    assert drained >= (50 - 20) / 10 * 0.8  # paced: never faster than Clay's 10/s
    assert proc.events("breaker.opened")
    assert await proc.stop() == 0


async def test_the_lifetime_cap_alerts_then_holds_that_source_only(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A source counted to 80 % and 95 % of its cap (20 rows) alerts once each; Clay's 403
    "Record limit reached" at its real cap (19) dead-letters that job (quota_exhausted) and
    holds the source's other jobs unburned, named in status and quota.list; another source
    goes on; a release lets the held job try again."""
    sim = simulator.sim
    sim.configure_webhook("capped", cap=19)
    proc = await started(kiln, simulator, ops={"lifetime_rows": 20})
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            for n in range(19):
                await client.submit("push_row", **push("capped", {"n": n}))
            await wait_for(client, lambda s: s["done"] == 19)
            over = await client.submit("push_row", **push("capped", {"n": 19}))
            held_section = await wait_for(client, lambda s: s["held_sources"])
            try:
                await client.submit("push_row", **push("capped", {"n": 20}))
            except BadRequest as exc:
                refused = exc.details
            other = await client.submit("push_row", **push("open", {"n": 1}))
            await wait_for(client, lambda s: s["done"] == 20)
            dead = await client.dlq_get(over["job_id"])
            quotas = {q["source"]: q for q in (await client.quota_list())["items"]}
            released = await client.quota_release("clay:/v3/sources/webhook/capped")
    source = "clay:/v3/sources/webhook/capped"
    assert dead["reason"] == "quota_exhausted" and other["state"] == "pending"
    assert list(held_section["held_sources"]) == [source]
    assert refused == {"reason": "quota_exhausted", "source": source}
    assert (quotas[source]["rows"], quotas[source]["held"], quotas[source]["held_by"]) == (
        19,
        True,
        "clay",
    )
    assert quotas["clay:/v3/sources/webhook/open"]["held"] is False
    assert released["held"] is False
    assert [e["percent"] for e in proc.events("quota.near_cap")] == [80, 95]
    (exhausted,) = proc.events("quota.exhausted")
    assert (exhausted["source"], exhausted["severity"]) == (source, "critical")
    assert sim.row_count("capped") == 19
    assert await proc.stop() == 0


async def test_sigterm_finishes_a_job_in_flight_within_the_grace_period(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """SIGTERM while a push takes a second at Clay: the job is done before the daemon exits,
    and the next process finds it done (nothing in doubt)."""
    proc = await started(kiln, simulator)
    simulator.sim.set_faults(Faults(latency=1.0, path_prefix="/v3/"))
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            answer = await client.submit("push_row", **push("w1", {"n": 1}))
            await simulator.sim.wait_until(lambda s: s.stats.delayed == 1)
            proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        simulator.sim.clear_faults()
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            job = await client.job(answer["job_id"])
            section = await outbox_status(client)
    assert job["state"] == "done" and section["since_start"]["in_doubt_at_start"] == 0
    assert proc.events("daemon.drained")[0]["jobs_complete"] is True
    assert simulator.sim.row_count("w1") == 1
    assert await proc.stop() == 0


async def test_kill_9_leaves_jobs_in_doubt_for_the_next_start(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """kill -9 with two pushes held at Clay: the next start finds both in doubt; the plain push
    (not safe to repeat) is dead in_doubt, the one that stamps its key runs again."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            plain = await client.submit("push_row", **push("w1", {"n": 1}))
            keyed = await client.submit("push_keyed", **push("w2", {"n": 2}))
            await sim.wait_until(lambda s: s.stats.hanging == 2)
        await proc.kill()
        sim.clear_faults()
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            await wait_for(client, lambda s: s["done"] == 1)
            plain_job = await client.job(plain["job_id"])
            keyed_job = await client.job(keyed["job_id"])
    assert (plain_job["state"], plain_job["reason"]) == ("dead", "in_doubt")
    assert keyed_job["state"] == "done"
    (summary,) = proc.events("outbox.in_doubt")
    assert (summary["requeued"], summary["dead"]) == (1, 1)
    assert await proc.stop() == 0


KEPT = """
[operations.push_kept]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{webhook_id}"
lane = "bulk"
breaker = "clay-webhook"
idempotency = "derive"
on_failure = "dlq"
auth = { header = "x-clay-webhook-auth", credential = "clay-webhook-token" }
"""


async def test_a_call_that_fails_is_kept_as_a_dead_job_with_on_failure_dlq(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """on_failure = "dlq": a call answered 503 fails with its error, whose details name the
    dead job (reason call_failed, the request kept); a fast breaker_open refusal is kept too;
    a retry from the DLQ delivers the row once Clay is back."""
    sim = simulator.sim
    proc = await started(kiln, simulator, extra=KEPT)
    sim.set_faults(Faults(error_rate=1.0, error_status=503, path_prefix="/v3/"))
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            try:
                await client.call("push_kept", **push("w7", {"n": 1}))
            except UpstreamError as exc:
                failed = exc
            await client.breaker_force("clay-webhook", "open")
            try:
                await client.call("push_kept", **push("w7", {"n": 2}))
            except BreakerOpen as exc:
                refused = exc
            kept = await client.dlq_get(failed.details["job_id"])
            kept_open = await client.dlq_get(refused.details["job_id"])
            sim.clear_faults()
            await client.breaker_force("clay-webhook", "reset")
            await client.dlq_retry(failed.details["job_id"])
            await wait_for(client, lambda s: s["done"] == 1)
    assert (failed.status, kept["reason"], kept["state"]) == (503, "call_failed", "dead")
    assert kept["request"]["json"] == {"n": 1} and kept["operation"] == "push_kept"
    assert kept_open["reason"] == "call_failed" and "breaker_open" in kept_open["error"]
    assert sim.row_count("w7") == 1
    assert len(proc.events("dlq.dead")) == 2
    assert await proc.stop() == 0


async def test_jobs_wait_out_a_clay_that_is_gone_and_drain_when_it_is_back(
    kiln: Factory,
) -> None:
    """The simulator is gone (connections refused) for a while: no attempt burns (a refused
    connection never sent the row), nothing is dead; the same simulator served again on the
    same port takes every row once."""
    sim = Simulator(SimSettings(api_key=API_KEY, webhook_rate=1000, webhook_burst=1000))
    async with open_simulator(sim) as running:
        port, url = running.port, running.url
    proc = kiln(outbox_config(url, reset="200ms"))
    await proc.start()
    with trio.fail_after(90):
        async with TrioClient(str(proc.socket)) as client:
            answers = [await client.submit("push_row", **push("w3", {"n": n})) for n in range(20)]
            await trio.sleep(2.0)  # refused, again and again; the breaker opens
            during = [await client.job(a["job_id"]) for a in answers]
            async with open_simulator(sim, port=port):
                await wait_for(client, lambda s: s["done"] == 20, timeout=60)
            section = await outbox_status(client)
    assert max(j["attempts"] for j in during) == 0
    assert {j["state"] for j in during} <= {"pending", "in_flight"}
    assert section["dead"] == 0 and sim.row_count("w3") == 20
    assert proc.events("breaker.opened")
    assert await proc.stop() == 0


async def test_rows_pushed_with_call_count_against_the_cap_too(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Eight rows pushed with call and one submitted count nine of a cap of 10 (the 80 % alert
    fires); a replayed call counts nothing."""
    proc = await started(kiln, simulator, ops={"lifetime_rows": 10})
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            for n in range(8):
                await client.call("push_row", **push("mixed", {"n": n}))
            replay = await client.call("push_row", **push("mixed", {"n": 0}))
            await client.submit("push_row", **push("mixed", {"n": 8}))
            await wait_for(client, lambda s: s["done"] == 1)
            with trio.fail_after(10):
                while True:
                    items = (await client.quota_list())["items"]
                    if items and items[0]["rows"] == 9:
                        break
                    await trio.sleep(0.02)
    assert replay.replayed
    assert (items[0]["source"], items[0]["cap"]) == ("clay:/v3/sources/webhook/mixed", 10)
    assert [e["percent"] for e in proc.events("quota.near_cap")] == [80]
    assert simulator.sim.row_count("mixed") == 9
    assert await proc.stop() == 0
