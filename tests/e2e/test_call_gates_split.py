"""Separate rate gates end to end: a Public API 429 closes `clay-public`, never the webhook gate."""

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


def _push(n: int) -> dict[str, Any]:
    return {"path_params": {"webhook_id": "w1"}, "json": {"n": n}}


async def _close_the_public_gate(client: TrioClient) -> int:
    """`me` twice: 200, then Clay's 429 with a ~100 s Retry-After; returns that Retry-After."""
    assert (await client.call("me"))["status"] == 200
    limited = await client.call("me")
    assert limited["status"] == 429
    retry_after = int(limited["headers"]["retry-after"])
    assert 90 <= retry_after <= 100
    await wait_gate_closed(client, "clay-public")
    return retry_after


async def test_a_public_api_429_holds_public_calls_but_not_webhook_pushes(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """The embedded operations: me's 429 closes clay-public; push_row still goes through at once."""
    sim = simulator.sim
    # The public API's bucket answers Retry-After = the seconds until its next token: 100 s.
    sim.update_settings(attrs.evolve(sim.settings, public_rate=0.01, public_burst=1))
    # Pushes paced as in production (10/s burst 20): only the closure could hold them.
    proc = kiln(clay_config(simulator.url, rate=10, burst=20))
    await proc.start()
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            retry_after = await _close_the_public_gate(client)
            public_seen = sim.stats.received["public"]
            refusals = []
            for op in ("me", "start_routine", "poll_routine"):
                params = {"routine_id": "r1", "run_id": "x1"} if op != "me" else {}
                key = "start-r1" if op == "start_routine" else None  # a start needs a key
                with pytest.raises(RateLimited) as info:
                    await client.call(op, deadline_ms=300, path_params=params, idempotency_key=key)
                refusals.append(info.value)
            pushed = await client.call("push_row", deadline_ms=2_000, **_push(1))
            status = await client.status()
    assert sim.stats.received["public"] == public_seen  # the refusals never reached Clay
    for exc in refusals:
        assert exc.details["reason"] == "closed"
        assert exc.details["gate"] == "clay-public"
        assert exc.retry_after is not None and retry_after - 5 <= exc.retry_after <= retry_after
    assert pushed["status"] == 200 and pushed["attempts"] == 1
    assert sim.row_count("w1") == 1
    gates = status["gate"]["upstreams"]
    assert gates["clay-public"]["closed"] is True and gates["clay-public"]["paced"] is False
    assert gates["clay"]["closed"] is False and gates["clay"]["per_second"] == 10
    closed = proc.events("gate.closed")
    assert [(e["gate"], e["reason"]) for e in closed] == [("clay-public", "429 from me")]
    assert await proc.stop() == 0


async def test_a_public_gate_closure_survives_a_restart_and_still_spares_pushes(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """After a restart the clay-public closure is restored for me; push_row is still served."""
    sim = simulator.sim
    sim.update_settings(attrs.evolve(sim.settings, public_rate=0.01, public_burst=1))
    proc = kiln(clay_config(simulator.url))
    await proc.start()
    with trio.fail_after(40):
        async with TrioClient(str(proc.socket)) as client:
            retry_after = await _close_the_public_gate(client)
        closed_at = trio.current_time()
        assert await proc.stop() == 0
        public_seen = sim.stats.received["public"]
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            with pytest.raises(RateLimited) as info:
                await client.call("me", deadline_ms=2_000)
            elapsed = trio.current_time() - closed_at
            pushed = await client.call("push_row", deadline_ms=2_000, **_push(2))
    assert sim.stats.received["public"] == public_seen
    assert info.value.details["gate"] == "clay-public"
    assert info.value.retry_after is not None
    assert retry_after - elapsed - 1.0 <= info.value.retry_after <= retry_after + 0.5
    assert pushed["status"] == 200
    restored = [e for e in proc.events("gate.closed") if e.get("restored")]
    assert [e["gate"] for e in restored] == ["clay-public"]
    assert await proc.stop() == 0


async def test_a_gate_defined_in_the_file_paces_its_operations_apart(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Explicit [gates] + operations: a 429 closes only the gate its operation names."""
    sim = simulator.sim
    sim.update_settings(attrs.evolve(sim.settings, public_rate=0.01, public_burst=1))
    extra = """
[gates.api]
per_second = 100
burst = 100

[operations.whoami]
upstream = "clay"
method = "GET"
path = "/public/v0/me"
lane = "critical"
gate = "api"

[operations.push]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{webhook_id}"
auth = { header = "x-clay-webhook-auth", credential = "clay-webhook-token" }
"""
    proc = kiln(clay_config(simulator.url, extra=extra))
    await proc.start()
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            assert (await client.call("whoami"))["status"] == 200
            assert (await client.call("whoami"))["status"] == 429
            with pytest.raises(RateLimited) as info:
                await client.call("whoami", deadline_ms=300)
            pushed = await client.call("push", deadline_ms=2_000, **_push(3))
            status = await client.status()
    assert info.value.details["gate"] == "api"
    assert pushed["status"] == 200
    gates = status["gate"]["upstreams"]
    assert gates["api"]["closed"] is True and gates["api"]["per_second"] == 100
    assert gates["clay"]["closed"] is False
    assert await proc.stop() == 0
