"""The health monitor's queue checks against real daemon processes and real inputs: dead jobs
over ``dlq_degraded`` (rows the simulator refuses), and a lane saturated for ``lane_window``
(calls the simulator holds); ``kiln status`` exits 1 while either holds, 0 once it is over."""

from __future__ import annotations

import trio
from kiln_harness import KilnProcess
from outbox_harness import Factory, outbox_config, wait_for
from test_daemon_health import HEALTH, config, health_events, kiln_status, wait_health

from claykiln.daemon import TrioClient
from claykiln.daemon.client import LaneFull
from claykiln.daemon.simulator import Faults, RunningSimulator

CSV_ROW = {
    "path_params": {"webhook_id": "w1"},
    "body": b"name,email\nada,ada@example.com\n",
    "headers": {"content-type": "text/csv"},
}
TINY_LANE = """
[lanes.tiny]
concurrency = 1
queue = 1
max_wait = "20s"

[operations.held_me]
upstream = "clay"
method = "GET"
path = "/public/v0/me"
lane = "tiny"
"""


async def test_dead_jobs_over_the_threshold_degrade_until_purged(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Two rows Clay answers 400 (a CSV body: final, not a credential problem) are dead; with
    dlq_degraded = 1 the daemon is degraded naming the dead-letter queue, kiln status exits 1;
    purged, it is healthy again (after hold) and exits 0; one alert per transition."""
    text = outbox_config(simulator.url, extra=HEALTH)
    text = text.replace("[daemon.outbox]\n", "[daemon.outbox]\ndlq_degraded = 1\n", 1)
    proc: KilnProcess = kiln(text)
    await proc.start()
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            for n in (1, 2):
                await client.submit("push_raw", **CSV_ROW, idempotency_key=f"csv-{n}")
            await wait_for(client, lambda s: s["dead"] == 2)
            status = await wait_health(client, "degraded")
            check = status["checks"]["checks"]["dead_letters"]
            assert check["state"] == "degraded"
            assert "2 jobs in the dead-letter queue (more than 1)" in check["reason"]
            assert (await kiln_status(proc, "--quiet")) == (1, "degraded\n")
            await client.dlq_purge(all=True, confirm=True)
            await wait_health(client, "healthy")
        assert (await kiln_status(proc, "--quiet")) == (0, "healthy\n")
    assert health_events(proc) == [
        ("health.check_degraded", "dead_letters"),
        ("health.degraded", None),
        ("health.check_healthy", "dead_letters"),
        ("health.healthy", None),
    ]
    assert await proc.stop() == 0


async def test_a_lane_saturated_for_its_window_degrades_until_it_drains(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A lane of one slot and a queue of one, the simulator holding its calls: the lane is full
    (a third caller gets lane_full) and after lane_window the daemon is degraded naming the
    lane; released, the calls finish and it is healthy again; one alert per transition."""
    sim = simulator.sim
    text = config(simulator.url, extra=TINY_LANE)
    text = text.replace(
        'liveness_timeout = "1s"\n', 'liveness_timeout = "1s"\nlane_window = "300ms"\n'
    )
    proc: KilnProcess = kiln(text)
    await proc.start()
    answers: list[int] = []
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            await wait_health(client, "healthy")
            sim.set_faults(Faults(hang=True, path_prefix="/public"))

            async def held_call() -> None:
                result = await client.call("held_me")
                answers.append(result.status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(held_call)
                nursery.start_soon(held_call)
                while (await client.status())["lanes"]["lanes"]["tiny"]["queued"] < 1:
                    await trio.sleep(0.02)
                try:
                    await client.call("held_me")
                except LaneFull:
                    pass
                else:
                    raise AssertionError("a third caller got into a full lane")
                status = await wait_health(client, "degraded")
                check = status["checks"]["checks"]["lanes"]
                assert check["state"] == "degraded"
                assert "lane tiny saturated" in check["reason"]
                assert (await kiln_status(proc, "--quiet")) == (1, "degraded\n")
                sim.set_faults(Faults())
            await wait_health(client, "healthy")
        assert (await kiln_status(proc, "--quiet")) == (0, "healthy\n")
    assert answers == [200, 200]
    assert health_events(proc) == [
        ("health.check_degraded", "lanes"),
        ("health.degraded", None),
        ("health.check_healthy", "lanes"),
        ("health.healthy", None),
    ]
    assert await proc.stop() == 0
