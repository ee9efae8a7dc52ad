"""The timeout hierarchy end to end: which stage timed out, and that the call really stopped.

A real daemon calls the in-process simulator, whose hang fault never answers. A timeout must
come back as ``timeout`` with the stage that ran out (the caller's deadline, the operation's
timeout class, or the lane queue), and the HTTP request must be cancelled for real: the
simulator sees the connection go (``abandoned``), nothing hangs there afterwards, and the
daemon's upstream pool has no connection left in use. A storm of 200 short deadlines must not
starve the pool for the calls that follow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import KilnError, KilnTimeout, TrioClient
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

PUBLIC = "/public/v0"
WAIT = 20.0  # seconds any single condition may take to appear on this shared 2-core machine
STORM_CALLS = 200
STORM_CONCURRENCY = 100  # callers in flight at once during the storm
STORM_CONNECTIONS = 4
STORM_DEADLINE_MS = 50
AFTER_STORM_CALLS = 20
# Long enough that the request reaches the simulator before it runs out even on a very busy
# machine (300 ms did not always, with 5 test processes on 2 cores): the cancellation of a
# request Clay is holding is what these tests prove.
DEADLINE_MS = 1000

# critical is wide enough that no storm call ever queues (so every refusal is a timeout);
# single holds one caller so the next one queues.
LANES = """
[lanes.critical]
concurrency = 250
queue = 10
max_wait = "10s"

[lanes.normal]
concurrency = 5

[lanes.bulk]
concurrency = 2

[lanes.single]
concurrency = 1
queue = 4
max_wait = "10s"
"""


async def _daemon(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, extra=LANES, **kw))
    await proc.start()
    return proc


async def _released(client: TrioClient, simulator: RunningSimulator) -> dict[str, Any]:
    """Wait until no upstream connection or lane slot is in use, then until nothing is left in
    the simulator.

    A lane slot is given back to the lanes actor, which counts it on its next pass: a status
    can show the call ended (nothing in flight, the connection back) while its lane still counts
    it active, so the lanes are waited for too. The order matters. A request the daemon wrote
    just before it gave up may still sit unread in the simulator's socket while the daemon is
    already idle; the simulator counts it as received when it reads it and as abandoned a
    moment later, when it reads the close. So the simulator is checked last, and ``wait_until``
    returns without a checkpoint once it holds: the caller reads counters in which every
    received request is settled.
    """
    with trio.fail_after(WAIT):
        while True:
            status = await client.status()
            lanes = status["lanes"]["lanes"].values()
            if (
                status["upstreams"]["clay"]["in_use"] == 0
                and status["server"]["in_flight"] == 0
                and all(lane["active"] == 0 for lane in lanes)
            ):
                break
            await trio.sleep(0.01)
        await simulator.sim.wait_until(lambda s: s.stats.hanging == 0 and s.stats.in_flight == 0)
        return status


async def test_deadline_shorter_than_the_class_times_out_at_stage_deadline(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """deadline_ms under the 10 s request class: timeout, stage deadline, the request cancelled."""
    proc = await _daemon(kiln, simulator, request_timeout="10s")
    simulator.sim.set_faults(Faults(hang=True, path_prefix=PUBLIC))
    async with TrioClient(str(proc.socket)) as client:
        started = trio.current_time()
        with trio.fail_after(WAIT), pytest.raises(KilnTimeout) as timed_out:
            await client.call("me", deadline_ms=DEADLINE_MS)
        waited = trio.current_time() - started
        assert timed_out.value.code == "timeout"
        details = timed_out.value.details
        assert details["stage"] == "deadline"
        assert details["upstream"] == "clay"
        assert details["sent"] is True
        assert waited >= DEADLINE_MS / 1000  # a lower bound: the deadline is never cut short
        status = await _released(client, simulator)
    assert simulator.sim.stats.abandoned["public"] == 1
    assert simulator.sim.stats.received["public"] == 1
    assert status["upstreams"]["clay"]["closed_after_error"] == 1
    assert status["lanes"]["lanes"]["critical"]["active"] == 0
    assert await proc.stop() == 0


async def test_class_timeout_shorter_than_the_deadline_times_out_at_stage_request(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A 1 s request class with no deadline, or a longer one: timeout, stage request."""
    proc = await _daemon(kiln, simulator, request_timeout="1s")
    simulator.sim.set_faults(Faults(hang=True, path_prefix=PUBLIC))
    async with TrioClient(str(proc.socket)) as client:
        for deadline_ms in (None, 10_000):
            with trio.fail_after(WAIT), pytest.raises(KilnTimeout) as timed_out:
                await client.call("me", deadline_ms=deadline_ms)
            assert timed_out.value.code == "timeout"
            assert timed_out.value.details["stage"] == "request"
            assert timed_out.value.details["timeout"] == 1.0
            await _released(client, simulator)
    assert simulator.sim.stats.abandoned["public"] == 2
    assert simulator.sim.stats.responses.total() == 0
    assert await proc.stop() == 0


async def test_deadline_passing_in_the_lane_queue_times_out_at_stage_lane(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Queued behind a hanging holder, a call whose deadline passes gets timeout, stage lane."""
    proc = await _daemon(kiln, simulator)
    simulator.sim.set_faults(Faults(hang=True, path_prefix=PUBLIC))
    async with TrioClient(str(proc.socket)) as client, trio.open_nursery() as nursery:
        holder: list[Any] = []

        async def hold() -> None:
            holder.append(await client.call("me", lane="single"))

        nursery.start_soon(hold)
        with trio.fail_after(WAIT):
            await simulator.sim.wait_until(lambda s: s.stats.hanging == 1)
        with trio.fail_after(WAIT), pytest.raises(KilnTimeout) as timed_out:
            await client.call("me", lane="single", deadline_ms=200)
        assert timed_out.value.details == {"stage": "lane", "lane": "single"}
        # The caller left the queue by a message the lanes actor counts on its next pass.
        with trio.fail_after(WAIT):
            while (lane := (await client.status())["lanes"]["lanes"]["single"])["timeouts"] < 1:
                await trio.sleep(0.01)
        assert lane["timeouts"] == 1
        assert lane["queued"] == 0
        assert simulator.sim.stats.received["public"] == 1  # the timed-out caller never left
        simulator.sim.clear_faults()
    assert holder[0]["status"] == 200
    assert await proc.stop() == 0


async def test_a_storm_of_cancelled_calls_leaves_the_pool_healthy(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """200 calls with 50 ms deadlines all time out; then 20 calls at once all succeed."""
    # The breaker would (rightly) open on 200 timeouts; this test is about the pool, so the
    # breaker's volume threshold is out of reach.
    proc = await _daemon(kiln, simulator, volume=1_000_000)
    simulator.sim.set_faults(Faults(hang=True, path_prefix=PUBLIC))
    path = str(proc.socket)
    codes: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(STORM_CONCURRENCY)

    async def storm_call(client: TrioClient) -> None:
        async with limiter:
            try:
                await client.call("me", deadline_ms=STORM_DEADLINE_MS, timeout=WAIT)
            except KilnError as exc:
                codes[exc.code] += 1
                stages[str(exc.details.get("stage"))] += 1
            else:
                codes["ok"] += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            clients = [
                await TrioClient.connect(path, nursery=nursery) for _ in range(STORM_CONNECTIONS)
            ]
            async with trio.open_nursery() as storm:
                for i in range(STORM_CALLS):
                    storm.start_soon(storm_call, clients[i % STORM_CONNECTIONS])
            for client in clients:
                await client.aclose()
    assert codes == {"timeout": STORM_CALLS}
    assert stages == {"deadline": STORM_CALLS}

    async with TrioClient(path) as client:
        storm_status = await _released(client, simulator)
        stats = simulator.sim.stats
        # Every storm request that reached Clay was abandoned by the daemon, none answered.
        # (How many got that far before 50 ms ran out depends on the machine's load: about
        # 130 of 200 when idle, none at all under heavy noise; either way none may linger.)
        assert stats.received["public"] == stats.abandoned["public"]
        assert stats.responses.total() == 0
        # Every storm call got as far as the upstream pool: it was the pool that was stormed.
        assert storm_status["upstreams"]["clay"]["requests"] == STORM_CALLS
        assert storm_status["lanes"]["lanes"]["critical"]["active"] == 0
        received_in_storm = stats.received["public"]
        simulator.sim.clear_faults()
        results: list[dict[str, Any]] = []

        async def ordinary() -> None:
            results.append(await client.call("me"))

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for _ in range(AFTER_STORM_CALLS):
                    nursery.start_soon(ordinary)
        status = await _released(client, simulator)
    assert [r["status"] for r in results] == [200] * AFTER_STORM_CALLS
    # The daemon sent each of the 20 exactly once (no retry, no request lost in the pool).
    assert status["upstreams"]["clay"]["requests"] == STORM_CALLS + AFTER_STORM_CALLS
    # A storm request the daemon wrote and gave up on can still wait in the simulator's accept
    # queue or socket buffer (unseen, so not counted) when the fault is cleared; on a loaded
    # machine it is read afterwards and answered 200 to a closed socket (seen in CI: 16). So the simulator's count is the 20 plus
    # those late ones, each of them settled: answered or abandoned, never hanging.
    stats = simulator.sim.stats
    assert set(stats.responses) == {("public", 200)}
    assert stats.responses["public", 200] + stats.abandoned["public"] == stats.received["public"]
    late = stats.responses["public", 200] - AFTER_STORM_CALLS
    assert 0 <= late <= STORM_CALLS - received_in_storm
    pool = status["upstreams"]["clay"]
    assert pool["in_use"] == 0
    assert pool["idle"] <= pool["max_connections"]
    assert status["lanes"]["lost_releases"] == 0
    assert status["health"] == "healthy"
    assert await proc.stop() == 0
