"""The rate gate end to end: pacing to Clay's webhook limit and the host-wide Retry-After closure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
from kiln_harness import KilnProcess, clay_config, wait_gate_closed

from claykiln.daemon import RateLimited, TrioClient
from claykiln.daemon.simulator import RunningSimulator

Factory = Callable[..., KilnProcess]

CALLERS = 100
CONNECTIONS = 4
RATE, BURST = 10, 20
# The requests that can be on their way at once: push_row's lane, bulk, has two slots. A gate at
# exactly Clay's rate and burst cannot rule out a 429 by itself: a request delayed on its way
# while both buckets are full loses Clay's bucket the refill the gate's keeps (on a loaded
# machine). Clay's bucket IN_FLIGHT deeper holds at least the gate's tokens plus every request
# on its way, whatever the delays; the pacing is still checked against BURST (_assert_paced).
IN_FLIGHT = 2


async def _started(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, **kw))
    await proc.start()
    return proc


def _push(webhook_id: str, n: int) -> dict[str, Any]:
    return {"path_params": {"webhook_id": webhook_id}, "json": {"n": n}}


async def _push_concurrently(proc: KilnProcess) -> list[dict[str, Any]]:
    """CALLERS pushes to webhook "paced" from concurrent tasks over CONNECTIONS connections."""
    results: list[dict[str, Any]] = []

    async def caller(client: TrioClient, n: int) -> None:
        results.append(await client.call("push_row", deadline_ms=60_000, **_push("paced", n)))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            clients = []
            for _ in range(CONNECTIONS):
                clients.append(await TrioClient.connect(str(proc.socket), nursery=nursery))
            async with trio.open_nursery() as callers:
                for n in range(CALLERS):
                    callers.start_soon(caller, clients[n % CONNECTIONS], n)
            for client in clients:
                await client.aclose()
    return results


def _assert_paced(sim: Any) -> None:
    """Every window of the arrivals holds at most BURST + RATE * seconds (+1 for jitter)."""
    assert sim.row_count("paced") == CALLERS
    assert sorted(row.body["n"] for row in sim.rows("paced")) == list(range(CALLERS))
    arrivals = sorted(row.received_at for row in sim.rows("paced"))
    for i, start in enumerate(arrivals):
        for j in range(i, len(arrivals)):
            window = arrivals[j] - start
            assert j - i + 1 <= BURST + RATE * window + 1, (i, j, window)


async def test_hundred_concurrent_pushes_never_meet_a_429_at_clays_exact_limit(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """100 concurrent pushes, daemon and Clay both at 10/s burst 20 (Clay's bucket IN_FLIGHT
    deeper): all 200, no 429."""
    sim = simulator.sim
    burst = BURST + IN_FLIGHT
    sim.update_settings(attrs.evolve(sim.settings, webhook_rate=RATE, webhook_burst=burst))
    proc = await _started(kiln, simulator, rate=RATE, burst=BURST)
    results = await _push_concurrently(proc)
    assert sim.stats.responses["webhook", 429] == 0
    assert [r["status"] for r in results] == [200] * CALLERS
    assert sim.stats.received["webhook"] == CALLERS
    _assert_paced(sim)
    assert not proc.events("gate.closed")
    assert await proc.stop() == 0


async def test_a_429_closes_the_gate_for_every_caller_until_retry_after(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """After Clay's 429 (Retry-After: 1) callers are refused or held; Clay sees nothing meanwhile."""
    sim = simulator.sim
    sim.update_settings(attrs.evolve(sim.settings, webhook_rate=1.0, webhook_burst=1))
    proc = await _started(kiln, simulator)
    refused: list[RateLimited] = []
    held: list[dict[str, Any]] = []
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            assert (await client.call("push_row", **_push("w1", 0)))["status"] == 200
            before_429 = trio.current_time()  # the simulator clock is this process's clock
            limited = await client.call("push_row", **_push("w1", 1))
            assert limited["status"] == 429
            assert limited["headers"]["retry-after"] == "1"
            assert limited["attempts"] == 1  # a POST push is never repeated blindly
            await wait_gate_closed(client, "clay")
            # Clay has room again; only the daemon's closure can hold the callers now.
            sim.update_settings(attrs.evolve(sim.settings, webhook_rate=1000.0, webhook_burst=1000))

            async def short(n: int) -> None:
                # Its own lane: the bulk lane's two slots are held by the patient callers.
                try:
                    await client.call(
                        "push_row", deadline_ms=300, lane="critical", **_push("w1", n)
                    )
                except RateLimited as exc:
                    refused.append(exc)

            async def patient(n: int) -> None:
                held.append(await client.call("push_row", deadline_ms=10_000, **_push("w1", n)))

            async with trio.open_nursery() as nursery:
                for n in range(2, 5):
                    nursery.start_soon(short, n)
                    nursery.start_soon(patient, n + 10)
                while len(refused) < 3:
                    await trio.sleep(0.01)
                assert sim.stats.received["webhook"] == 2  # the closure held everyone
            status = await client.status()
    assert len(refused) == 3
    for exc in refused:
        assert exc.retry_after is not None and 0 < exc.retry_after <= 1.0
        assert exc.details["reason"] == "closed"
    assert [r["status"] for r in held] == [200] * 3
    assert sim.stats.received["webhook"] == 2 + 3
    assert sim.stats.responses["webhook", 429] == 1
    late = [row.received_at for row in sim.rows("w1") if row.body["n"] >= 10]
    assert len(late) == 3
    assert min(late) >= before_429 + 1.0 - 0.01  # no request before Retry-After passed
    assert status["gate"]["upstreams"]["clay"]["limited"] >= 3
    closed = proc.events("gate.closed")
    assert len(closed) == 1
    assert closed[0]["alert"] is True
    assert closed[0]["retry_after"] == 1.0
    assert "429" in closed[0]["reason"]
    assert await proc.stop() == 0


async def test_gate_closure_survives_a_restart(kiln: Factory, simulator: RunningSimulator) -> None:
    """A long Retry-After persists: after a restart calls are refused with the time remaining."""
    sim = simulator.sim
    # The public API's bucket answers Retry-After = the seconds until its next token: 100 s.
    sim.update_settings(attrs.evolve(sim.settings, public_rate=0.01, public_burst=1))
    proc = await _started(kiln, simulator)
    with trio.fail_after(40):
        async with TrioClient(str(proc.socket)) as client:
            assert (await client.call("me"))["status"] == 200
            limited = await client.call("me")
            assert limited["status"] == 429
            retry_after = int(limited["headers"]["retry-after"])
            assert 90 <= retry_after <= 100
            closed_at = trio.current_time()
            await wait_gate_closed(client, "clay-public")  # then it is also on its way to disk
        assert await proc.stop() == 0
        seen = sim.stats.clay_requests
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            refusals = []
            # Another operation on the same gate (clay-public) is held too: the closure is
            # host-wide. (push_row is paced by the webhook's gate "clay": test_call_gates_split.)
            start = {"path_params": {"routine_id": "r"}, "idempotency_key": "start-r"}
            for op, params in (("me", {}), ("start_routine", start)):
                with pytest.raises(RateLimited) as info:
                    await client.call(op, deadline_ms=2_000, **params)
                refusals.append(info.value)
            elapsed = trio.current_time() - closed_at
            status = await client.status()
    assert sim.stats.clay_requests == seen
    for exc in refusals:
        assert exc.retry_after is not None
        assert retry_after - elapsed - 1.0 <= exc.retry_after <= retry_after + 0.5
        assert exc.details["reason"] == "closed"
    assert status["gate"]["upstreams"]["clay-public"]["closed"] is True
    restored = [e for e in proc.events("gate.closed") if e.get("restored")]
    assert len(restored) == 1
    assert await proc.stop() == 0


async def test_a_closed_gate_refuses_a_short_deadline_at_once_even_behind_a_full_lane(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A call that cannot outlast the gate's closure gets rate_limited, not a lane timeout."""
    sim = simulator.sim
    # A 100 s closure of gate clay-public from the public API's 429.
    sim.update_settings(attrs.evolve(sim.settings, public_rate=0.01, public_burst=1))
    proc = await _started(kiln, simulator)
    poll = {"path_params": {"routine_id": "r1", "run_id": "x1"}}
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            assert (await client.call("me"))["status"] == 200
            assert (await client.call("me"))["status"] == 429

            async def patient() -> None:
                await client.call("poll_routine", deadline_ms=120_000, **poll)

            async with trio.open_nursery() as nursery:
                for _ in range(5):  # the normal lane has 5 slots: all wait in the gate
                    nursery.start_soon(patient)
                while (await client.status())["lanes"]["lanes"]["normal"]["active"] < 5:
                    await trio.sleep(0.01)
                try:
                    with pytest.raises(RateLimited):
                        await client.call("poll_routine", deadline_ms=300, **poll)
                finally:
                    nursery.cancel_scope.cancel()
    assert sim.stats.received["public"] == 2
    assert await proc.stop() == 0
