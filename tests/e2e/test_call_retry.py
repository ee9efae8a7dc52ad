"""Retries end to end: which outcomes are retried, how often, and never past the deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
from kiln_harness import KilnProcess, clay_config, wait_gate_closed

from claykiln.daemon import TrioClient, UpstreamError
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

RETRYING = {"attempts": 3, "retry_base": "20ms", "retry_cap": "100ms"}

PUSH_OPERATIONS = """
[operations.push_row]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{webhook_id}"
lane = "bulk"
auth = { header = "x-clay-webhook-auth", credential = "clay-webhook-token" }

[operations.push_row_safe]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{webhook_id}"
lane = "bulk"
repeat_safe = true
auth = { header = "x-clay-webhook-auth", credential = "clay-webhook-token" }
"""


async def _started(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, **kw))
    await proc.start()
    return proc


def _push(webhook_id: str, n: int) -> dict[str, Any]:
    return {"path_params": {"webhook_id": webhook_id}, "json": {"n": n}}


async def test_5xx_is_retried_with_backoff_until_success(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Two 503s then success: status 200 after 3 attempts, 3 requests, backoff within the cap."""
    proc = await _started(kiln, simulator, **RETRYING)
    sim = simulator.sim
    sim.set_faults(Faults(burst=2, error_status=503, path_prefix="/public"))
    with trio.fail_after(20):
        async with TrioClient(str(proc.socket)) as client:
            result = await client.call("me", deadline_ms=5_000)
    assert (result["status"], result["attempts"]) == (200, 3)
    assert result["body"]["workspace"]["id"] == 1001
    assert sim.stats.received["public"] == 3
    assert sim.stats.responses["public", 503] == 2
    retries = proc.events("call.retry")
    assert [(e["attempt"], e["status"]) for e in retries] == [(1, 503), (2, 503)]
    # Full jitter under a doubling ceiling: base 20 ms, then 40 ms (cap 100 ms).
    assert 0 <= retries[0]["delay"] <= 0.02 + 0.001
    assert 0 <= retries[1]["delay"] <= 0.04 + 0.001
    assert await proc.stop() == 0


async def test_attempts_count_every_try(kiln: Factory, simulator: RunningSimulator) -> None:
    """Five 503s with attempts=3: UpstreamError after exactly 3 requests, with the details."""
    proc = await _started(kiln, simulator, **RETRYING)
    sim = simulator.sim
    sim.set_faults(Faults(burst=5, error_status=503, path_prefix="/public"))
    with trio.fail_after(20):
        async with TrioClient(str(proc.socket)) as client:
            with pytest.raises(UpstreamError) as info:
                await client.call("me", deadline_ms=5_000)
    error = info.value
    assert sim.stats.received["public"] == 3
    assert error.status == 503
    assert error.details["attempts"] == 3
    assert error.details["upstream"] == "clay"
    assert "Injected error 503" in error.body
    assert "3 attempt" in error.message
    assert len(proc.events("call.retry")) == 2
    assert await proc.stop() == 0


async def test_4xx_is_never_retried(kiln: Factory, simulator: RunningSimulator) -> None:
    """A 404 on a GET and a 400 on a POST are final: one request each, attempts 1."""
    proc = await _started(kiln, simulator, **RETRYING)
    sim = simulator.sim
    with trio.fail_after(20):
        async with TrioClient(str(proc.socket)) as client:
            missing = await client.call(
                "poll_routine", path_params={"routine_id": "r1", "run_id": "run_nope"}
            )
            garbled = await client.call(
                "push_row",
                path_params={"webhook_id": "w1"},
                body=b"{not json",
                headers={"content-type": "application/json"},
            )
    assert (missing["status"], missing["attempts"]) == (404, 1)
    assert (garbled["status"], garbled["attempts"]) == (400, 1)
    assert sim.stats.received["public"] == 1
    assert sim.stats.received["webhook"] == 1
    assert not proc.events("call.retry")
    assert await proc.stop() == 0


async def test_a_push_is_repeated_only_when_declared_repeat_safe(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A POST push is never retried after it may have been stored, unless repeat_safe."""
    proc = kiln(clay_config(simulator.url, extra=PUSH_OPERATIONS, **RETRYING))
    await proc.start()
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            sim.set_faults(Faults(burst=6, error_status=503, path_prefix="/v3"))
            with pytest.raises(UpstreamError) as plain:
                await client.call("push_row", deadline_ms=5_000, **_push("a", 1))
            assert plain.value.details["attempts"] == 1
            assert sim.stats.received["webhook"] == 1
            with pytest.raises(UpstreamError) as safe:
                await client.call("push_row_safe", deadline_ms=5_000, **_push("a", 2))
            assert safe.value.details["attempts"] == 3
            assert sim.stats.received["webhook"] == 1 + 3

            # The row is stored and then the connection drops: the daemon cannot know.
            sim.set_faults(Faults(reset="after_store", path_prefix="/v3"))
            with pytest.raises(UpstreamError) as lost:
                await client.call("push_row", deadline_ms=5_000, **_push("b", 1))
            assert lost.value.details["kind"] == "reset"
            assert lost.value.details["attempts"] == 1
            assert sim.row_count("b") == 1  # stored once, never duplicated
            with pytest.raises(UpstreamError) as repeated:
                await client.call("push_row_safe", deadline_ms=5_000, **_push("c", 1))
            assert repeated.value.details["attempts"] == 3
            assert sim.row_count("c") == 3  # what repeat_safe means for a non-idempotent POST
    assert await proc.stop() == 0


async def test_a_retry_that_cannot_finish_before_the_deadline_is_not_made(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A 429's Retry-After past the deadline ends the call with the 429; within it, it waits."""
    proc = await _started(kiln, simulator, **RETRYING)
    sim = simulator.sim
    # One request per second on the public API: the second in a row gets 429, Retry-After: 1.
    sim.update_settings(attrs.evolve(sim.settings, public_rate=1.0, public_burst=1))
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            assert (await client.call("me"))["status"] == 200
            short = await client.call("me", deadline_ms=500)
            assert (short["status"], short["attempts"]) == (429, 1)
            assert short["headers"]["retry-after"] == "1"
            assert sim.stats.received["public"] == 2  # no retry was started
            await wait_gate_closed(client, "clay-public")  # before the next call
            # A caller with time to spare is held by the gate until Retry-After has passed...
            held = await client.call("me", deadline_ms=10_000)
            assert (held["status"], held["attempts"]) == (200, 1)
            # ...and one that meets the 429 itself retries after Retry-After, within its deadline.
            retried = await client.call("me", deadline_ms=10_000)
            assert (retried["status"], retried["attempts"]) == (200, 2)
    assert sim.stats.received["public"] == 5
    assert sim.stats.responses["public", 429] == 2
    (retry,) = proc.events("call.retry")
    assert retry["status"] == 429 and retry["delay"] >= 1.0
    assert await proc.stop() == 0


async def test_a_429_on_a_push_is_retried_after_retry_after(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Clay's 429 stores nothing, so a push that met one is repeated after Retry-After."""
    proc = await _started(kiln, simulator, **RETRYING)
    sim = simulator.sim
    sim.update_settings(attrs.evolve(sim.settings, webhook_rate=1.0, webhook_burst=1))
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            assert (await client.call("push_row", **_push("w1", 0)))["status"] == 200
            result = await client.call("push_row", deadline_ms=10_000, **_push("w1", 1))
    assert (result["status"], result["attempts"]) == (200, 2)
    assert sim.row_count("w1") == 2
    assert await proc.stop() == 0
