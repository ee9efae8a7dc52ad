"""Bulkhead lanes end to end: a real daemon, the simulator over HTTP, the trio client.

The simulator's hang fault holds requests so callers keep their lane slots; every wait is bounded
by ``trio.fail_after`` and every fact is read from the daemon's ``status`` RPC or the simulator's
exact counters, never from timing (one lower bound on the max wait is a fact the daemon cannot
beat, not a speed claim).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import ConnectionLost, KilnError, LaneFull, TrioClient
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

PUBLIC = "/public/v0"
WEBHOOKS = "/v3/sources/webhook"
WAIT = 20.0  # seconds any single condition may take to appear on this shared 2-core machine

# critical: the small lane under test (N=2, Q=3); bulk: small enough to saturate; brief: a short
# max wait reached through the call's lane override.
LANES = """
[lanes.critical]
concurrency = 2
queue = 3
max_wait = "20s"

[lanes.normal]
concurrency = 5
queue = 10
max_wait = "5s"

[lanes.bulk]
concurrency = 2
queue = 3
max_wait = "30s"

[lanes.brief]
concurrency = 1
queue = 4
max_wait = "500ms"
"""


async def _daemon(kiln: Factory, simulator: RunningSimulator) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, extra=LANES))
    await proc.start()
    return proc


async def _lane_when(
    client: TrioClient, lane: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll ``status`` until ``predicate(lane view)`` holds; return the whole status."""
    with trio.fail_after(WAIT):
        while True:
            status = await client.status()
            if predicate(status["lanes"]["lanes"][lane]):
                return status
            await trio.sleep(0.01)


async def _sim_when(simulator: RunningSimulator, predicate: Callable[[Any], bool]) -> None:
    with trio.fail_after(WAIT):
        await simulator.sim.wait_until(predicate)


class Callers:
    """Calls on their own connections (so one can hang up), outcomes kept by name."""

    def __init__(self, nursery: trio.Nursery, path: str) -> None:
        self.nursery = nursery
        self.path = path
        self.clients: dict[str, TrioClient] = {}
        self.outcomes: dict[str, Any] = {}

    async def start(self, name: str, operation: str, **kw: Any) -> None:
        client = await TrioClient.connect(self.path, nursery=self.nursery)
        self.clients[name] = client
        self.nursery.start_soon(self._run, name, client, operation, kw)

    async def _run(self, name: str, client: TrioClient, operation: str, kw: dict[str, Any]) -> None:
        try:
            self.outcomes[name] = await client.call(operation, **kw)
        except KilnError as exc:
            self.outcomes[name] = exc

    async def hang_up(self, name: str) -> None:
        await self.clients[name].aclose()

    async def close_all(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def _fill_critical(callers: Callers, client: TrioClient, simulator: RunningSimulator) -> None:
    """Holders h0, h1 (both hanging in the simulator), then q2, q3, q4 queued in that order."""
    for hanging, name in enumerate(["h0", "h1"], start=1):
        await callers.start(name, "me")
        await _sim_when(simulator, partial(_hanging_is, hanging))
    for queued, name in enumerate(["q2", "q3", "q4"], start=1):
        await callers.start(name, "me")
        await _lane_when(client, "critical", partial(_queued_is, queued))


def _hanging_is(count: int, sim: Any) -> bool:
    return bool(sim.stats.hanging == count)


def _queued_is(count: int, view: dict[str, Any]) -> bool:
    return bool(view["queued"] == count)


async def test_lane_admits_n_queues_q_and_refuses_the_next_at_once(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """N=2 callers reach Clay, Q=3 wait, the 6th gets lane_full; status shows the load."""
    proc = await _daemon(kiln, simulator)
    simulator.sim.set_faults(Faults(hang=True, path_prefix=PUBLIC))
    async with TrioClient(str(proc.socket)) as client, trio.open_nursery() as nursery:
        callers = Callers(nursery, str(proc.socket))
        await _fill_critical(callers, client, simulator)
        status = await _lane_when(client, "critical", lambda v: v["active"] == 2)
        with trio.fail_after(WAIT), pytest.raises(LaneFull) as refused:
            await client.call("me")
        assert refused.value.code == "lane_full"
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        assert refused.value.details["lane"] == "critical"
        assert refused.value.details["reason"] == "queue_full"
        # Status while loaded: saturation, queue depth and in-flight counts are all visible.
        lane = status["lanes"]["lanes"]["critical"]
        assert (lane["active"], lane["queued"], lane["saturation"]) == (2, 3, 1.0)
        assert status["server"]["in_flight"] == 5
        assert status["upstreams"]["clay"]["in_use"] == 2
        # Counted by the lanes actor on its next pass (the refusal itself took no ask).
        await _lane_when(client, "critical", lambda v: v["rejected"] == 1)
        assert simulator.sim.stats.hanging == 2
        assert simulator.sim.stats.received["public"] == 2  # only N reached Clay
        assert callers.outcomes == {}
        simulator.sim.clear_faults()
        with trio.fail_after(WAIT):
            while len(callers.outcomes) < 5:
                await trio.sleep(0.01)
        await callers.close_all()
        idle = await _lane_when(client, "critical", lambda v: v["active"] == v["queued"] == 0)
    assert [r["status"] for r in callers.outcomes.values()] == [200] * 5
    assert idle["server"]["in_flight"] == 0
    assert idle["upstreams"]["clay"]["in_use"] == 0
    assert simulator.sim.stats.responses["public", 200] == 5
    assert await proc.stop() == 0


async def test_a_caller_that_hangs_up_gives_its_slot_or_queue_place_back(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A holder or a queued caller closing its connection frees its place; nothing leaks."""
    proc = await _daemon(kiln, simulator)
    simulator.sim.set_faults(Faults(hang=True, path_prefix=PUBLIC))
    async with TrioClient(str(proc.socket)) as client, trio.open_nursery() as nursery:
        callers = Callers(nursery, str(proc.socket))
        await _fill_critical(callers, client, simulator)
        # A holder hangs up: its HTTP request to Clay is cancelled, the oldest waiter moves up.
        await callers.hang_up("h0")
        await _sim_when(simulator, lambda s: s.stats.abandoned["public"] == 1)
        await _sim_when(simulator, lambda s: s.stats.hanging == 2)
        await _lane_when(client, "critical", lambda v: v["active"] == 2 and v["queued"] == 2)
        assert simulator.sim.stats.received["public"] == 3
        # A queued caller hangs up: it leaves the queue and never reaches Clay.
        await callers.hang_up("q3")
        status = await _lane_when(client, "critical", lambda v: v["queued"] == 1)
        assert status["lanes"]["lanes"]["critical"]["cancelled"] == 1
        assert status["server"]["in_flight"] == 3
        # The freed places are real: two newcomers get in, the third finds the lane full.
        await callers.start("n5", "me")
        await callers.start("n6", "me")
        await _lane_when(client, "critical", lambda v: v["queued"] == 3)
        with trio.fail_after(WAIT), pytest.raises(LaneFull):
            await client.call("me")
        assert simulator.sim.stats.received["public"] == 3
        simulator.sim.clear_faults()
        with trio.fail_after(WAIT):
            while len(callers.outcomes) < 7:
                await trio.sleep(0.01)
        await callers.close_all()
        idle = await _lane_when(client, "critical", lambda v: v["active"] == v["queued"] == 0)
    out = callers.outcomes
    assert isinstance(out.pop("h0"), ConnectionLost)
    assert isinstance(out.pop("q3"), ConnectionLost)
    assert {name: r["status"] for name, r in out.items()} == dict.fromkeys(
        ["h1", "q2", "q4", "n5", "n6"], 200
    )
    stats = simulator.sim.stats
    assert stats.abandoned["public"] == 1
    assert stats.received["public"] == 6
    assert stats.responses["public", 200] == 5
    assert idle["server"]["in_flight"] == 0
    assert idle["upstreams"]["clay"]["in_use"] == 0
    assert idle["lanes"]["lost_releases"] == 0
    assert await proc.stop() == 0


async def test_a_saturated_bulk_lane_leaves_critical_calls_alone(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """With bulk full of hanging webhook pushes, a critical-lane `me` still answers 200."""
    proc = await _daemon(kiln, simulator)
    simulator.sim.set_faults(Faults(hang=True, path_prefix=WEBHOOKS))
    pushes: list[Any] = []
    async with TrioClient(str(proc.socket)) as client, trio.open_nursery() as nursery:

        async def push(i: int) -> None:
            pushes.append(
                await client.call("push_row", path_params={"webhook_id": "w1"}, json={"i": i})
            )

        for i in range(5):  # 2 holders + 3 queued: bulk is full
            nursery.start_soon(push, i)
        await _sim_when(simulator, lambda s: s.stats.hanging == 2)
        await _lane_when(client, "bulk", lambda v: v["active"] == 2 and v["queued"] == 3)
        with trio.fail_after(WAIT), pytest.raises(LaneFull) as refused:
            await client.call("push_row", path_params={"webhook_id": "w1"}, json={"i": 99})
        assert refused.value.details["lane"] == "bulk"
        with trio.fail_after(WAIT):
            me = await client.call("me")
        assert me["status"] == 200
        assert me["body"]["workspace"]["id"] == 1001
        # Bulk is still exactly as saturated as before: the critical call went around it.
        assert pushes == []
        assert simulator.sim.stats.hanging == 2
        status = await client.status()
        assert status["lanes"]["lanes"]["bulk"]["active"] == 2
        assert status["lanes"]["lanes"]["bulk"]["queued"] == 3
        assert status["lanes"]["lanes"]["critical"]["admitted"] == 1
        simulator.sim.clear_faults()
    assert [r["status"] for r in pushes] == [200] * 5
    assert simulator.sim.row_count("w1") == 5
    assert sorted(row.body["i"] for row in simulator.sim.rows("w1")) == list(range(5))
    assert await proc.stop() == 0


async def test_a_queued_caller_gets_lane_full_max_wait_after_the_max_wait(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A caller queued behind a hanging holder is refused with reason max_wait after 500 ms."""
    proc = await _daemon(kiln, simulator)
    simulator.sim.set_faults(Faults(hang=True, path_prefix=PUBLIC))
    async with TrioClient(str(proc.socket)) as client, trio.open_nursery() as nursery:
        callers = Callers(nursery, str(proc.socket))
        await callers.start("holder", "me", lane="brief")
        await _sim_when(simulator, lambda s: s.stats.hanging == 1)
        started = trio.current_time()
        with trio.fail_after(WAIT), pytest.raises(LaneFull) as refused:
            await client.call("me", lane="brief")
        waited = trio.current_time() - started
        assert refused.value.details == {"lane": "brief", "reason": "max_wait"}
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        # A lower bound only: the daemon cannot refuse before the lane's max wait has passed.
        assert waited >= 0.5
        status = await _lane_when(client, "brief", lambda v: v["queued"] == 0)
        assert status["lanes"]["lanes"]["brief"]["active"] == 1
        assert status["lanes"]["lanes"]["brief"]["rejected"] == 1
        assert simulator.sim.stats.received["public"] == 1  # the refused caller never left
        assert simulator.sim.stats.hanging == 1  # the holder is untouched
        simulator.sim.clear_faults()
        with trio.fail_after(WAIT):
            while "holder" not in callers.outcomes:
                await trio.sleep(0.01)
        await callers.close_all()
    assert callers.outcomes["holder"]["status"] == 200
    assert await proc.stop() == 0
