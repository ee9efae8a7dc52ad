"""Graceful degradation end to end: a real daemon falls back on the last good answer it kept
(in LMDB) while the simulator is down, and errors when it has none or it is too old."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import BreakerOpen, TrioClient, UpstreamError
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

CACHED = """
[operations.me]
upstream = "clay"
gate = "clay-public"
method = "GET"
path = "/public/v0/me"
lane = "critical"
on_failure = "fallback"
cache = { fresh_for = "1m", stale_for = "10m", max_age = "1h" }

[operations.me_brief]
upstream = "clay"
gate = "clay-public"
method = "GET"
path = "/public/v0/me"
lane = "critical"
on_failure = "fallback"
cache = { fresh_for = "100ms", stale_for = "200ms", max_age = "300ms" }

[operations.start_routine]
upstream = "clay"
gate = "clay-public"
method = "POST"
path = "/public/v0/routines/{routine_id}/runs"
lane = "normal"
idempotency = "required"

[operations.poll_routine]
upstream = "clay"
gate = "clay-public"
method = "GET"
path = "/public/v0/routines/{routine_id}/runs/{run_id}"
lane = "normal"
on_failure = "fallback"
cache = { fresh_for = "1m", stale_for = "10m", max_age = "1h" }
cache_key = "{routine_id}"
"""
DOWN = Faults(outage="unavailable", path_prefix="/public/")


async def started(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, extra=CACHED, **kw))
    await proc.start()
    return proc


async def test_a_failure_is_answered_from_the_cache_also_after_a_restart(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Nothing kept: the 503 itself. Kept: the last good answer, fresh, with the 503 as its
    error; the next daemon process still has it."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            sim.set_faults(DOWN)
            with pytest.raises(UpstreamError):
                await client.call("me")
            sim.clear_faults()
            good = await client.call("me")
            cached: list[Any] = []
            while not cached:  # the cache actor keeps the answer just after the reply
                await trio.sleep(0.01)
                cached = await client.request("cache.list", {"operation": "me"})
            sim.set_faults(DOWN)
            answered = await client.call("me")
        assert await proc.stop() == 0
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            after_restart = await client.call("me")
            status = await client.status()
    assert not good.fallback and good.body["workspace"]["id"] == 1001
    for result in (answered, after_restart):
        assert (result.fallback, result.staleness, result.body) == (True, "fresh", good.body)
        assert result.age is not None and 0 <= result.age < 60
        assert isinstance(result.error, UpstreamError) and result.error.status == 503
    assert [(e["operation"], e["status"]) for e in cached] == [("me", 200)]
    assert status["cache"]["entries"] == 1 and status["cache"]["served"] == 1
    assert [e["staleness"] for e in proc.events("call.fallback")] == ["fresh", "fresh"]
    assert await proc.stop() == 0


async def test_an_open_breaker_is_answered_on_the_reader(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """With the breaker forced open, the cached answer comes back without a request to Clay;
    the template key shares one answer between runs of a routine."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            run = await client.call(
                "start_routine", path_params={"routine_id": "r1"}, json={}, idempotency_key="s1"
            )
            run_id = run.body["run_id"]
            polled = await client.call(
                "poll_routine", path_params={"routine_id": "r1", "run_id": run_id}
            )
            while not await client.request("cache.list", {"operation": "poll_routine"}):
                await trio.sleep(0.01)  # the cache actor keeps the answer just after the reply
            await client.breaker_force("clay", "open")
            seen = sim.stats.received["public"]
            other_run = await client.call(
                "poll_routine", path_params={"routine_id": "r1", "run_id": "run_other"}
            )
            with pytest.raises(BreakerOpen):
                await client.call("poll_routine", path_params={"routine_id": "r2", "run_id": "x"})
    assert sim.stats.received["public"] == seen
    assert other_run.fallback and other_run.body == polled.body
    assert isinstance(other_run.error, BreakerOpen)
    assert await proc.stop() == 0


async def test_an_answer_past_max_age_is_not_served(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Older than max_age (300 ms here): the caller gets the original error."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            await client.call("me_brief")
            sim.set_faults(DOWN)
            await trio.sleep(0.4)  # let the kept answer age past max_age (wall clock)
            with pytest.raises(UpstreamError):
                await client.call("me_brief")
    assert await proc.stop() == 0
