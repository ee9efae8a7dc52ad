"""Idempotency end to end: real daemon processes, the Clay simulator, real LMDB.

What a duplicate would look like at Clay is counted at the simulator: requests received per
kind, rows stored per webhook, routine runs started.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import (
    ConnectionLost,
    IdempotencyInDoubt,
    IdempotencyMismatch,
    TrioClient,
    UpstreamError,
)
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

AUTH = 'auth = { header = "x-clay-webhook-auth", credential = "clay-webhook-token" }'
PUSHES = f"""
[operations.push_row]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{{webhook_id}}"
lane = "bulk"
idempotency = "derive"
{AUTH}

[operations.push_safe]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{{webhook_id}}"
lane = "bulk"
repeat_safe = true
idempotency = "required"
{AUTH}

[operations.push_keyed]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{{webhook_id}}"
lane = "bulk"
idempotency = "required"
key_field = "kiln_key"
idempotency_header = true
{AUTH}

[operations.push_plain]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{{webhook_id}}"
lane = "bulk"
idempotency = "required"
{AUTH}

[operations.push_brief]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{{webhook_id}}"
lane = "bulk"
idempotency = "required"
idempotency_retention = "1s"
{AUTH}

[lanes.bulk]
concurrency = 64
queue = 1000
max_wait = "30s"
"""


def push(webhook: str, row: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"path_params": {"webhook_id": webhook}, "json": row, **kw}


async def started(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, extra=PUSHES, **kw))
    await proc.start()
    return proc


async def idempotency_status(client: TrioClient) -> dict[str, Any]:
    status = await client.status()
    section: dict[str, Any] = status["idempotency"]
    return section


@pytest.mark.parametrize("key", ["order-1", None], ids=["given", "derived"])
async def test_fifty_concurrent_identical_calls_reach_the_simulator_once(
    kiln: Factory, simulator: RunningSimulator, key: str | None
) -> None:
    """50 callers on 5 connections, one request held at Clay: Clay gets it once, every caller
    gets the same answer, 49 are marked coalesced or replayed."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
    results: list[Any] = []

    async def one(client: TrioClient) -> None:
        row = push("w50", {"email": "ada@example.com"}, idempotency_key=key)
        results.append(await client.call("push_row", **row))

    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            watcher = await stack.enter_async_context(TrioClient(str(proc.socket)))
            clients = [
                await stack.enter_async_context(TrioClient(str(proc.socket))) for _ in range(5)
            ]
            async with trio.open_nursery() as nursery:
                for n in range(50):
                    nursery.start_soon(one, clients[n % 5])
                await sim.wait_until(lambda s: s.stats.hanging == 1)
                while (await idempotency_status(watcher))["coalesced"] < 49:
                    await trio.sleep(0.01)
                sim.clear_faults()
    assert sim.stats.received["webhook"] == 1
    assert sim.row_count("w50") == 1
    assert len(results) == 50
    assert {(r.status, str(r.body)) for r in results} == {(200, "{'status': 'ok'}")}
    marked = [r for r in results if r.coalesced or r.replayed]
    assert len(marked) == 49
    (used,) = {r.idempotency_key for r in results}
    assert used == key if key else used.startswith("sha256:")
    assert await proc.stop() == 0


async def test_a_replay_survives_a_restart_and_a_mismatch_names_both_fingerprints(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A completed key is replayed by the next daemon process without reaching Clay; the key
    with another row is refused with both fingerprints."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            first = await client.call("push_plain", **push("w1", {"n": 1}), idempotency_key="k-1")
        assert await proc.stop() == 0
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            again = await client.call("push_plain", **push("w1", {"n": 1}), idempotency_key="k-1")
            with pytest.raises(IdempotencyMismatch) as info:
                await client.call("push_plain", **push("w1", {"n": 2}), idempotency_key="k-1")
            shown = await client.request("idempotency.get", {"key": "k-1"})
    assert (first.replayed, again.replayed, again.body) == (False, True, first.body)
    assert sim.stats.received["webhook"] == 1
    details = info.value.details
    assert len(details["fingerprint"]) == len(details["request_fingerprint"]) == 64
    assert details["fingerprint"] != details["request_fingerprint"]
    assert shown["state"] == "completed" and shown["fingerprint"] == details["fingerprint"]
    mismatch = proc.events("idempotency.mismatch")
    assert mismatch and mismatch[0]["alert"] is True
    assert await proc.stop() == 0


async def test_an_expired_key_runs_again(kiln: Factory, simulator: RunningSimulator) -> None:
    """Past its retention (1 s here) a key is no longer replayed: the call reaches Clay again."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            await client.call("push_brief", **push("w2", {"n": 1}), idempotency_key="brief")
            replay = await client.call(
                "push_brief", **push("w2", {"n": 1}), idempotency_key="brief"
            )
            assert replay.replayed
            while not (await client.request("idempotency.get", {"key": "brief"}) or {}).get(
                "expired", True
            ):
                await trio.sleep(0.05)
            again = await client.call("push_brief", **push("w2", {"n": 1}), idempotency_key="brief")
    assert not again.replayed
    assert sim.row_count("w2") == 2
    assert await proc.stop() == 0


async def test_a_503_is_not_stored_and_a_retry_reaches_clay(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """An upstream error is not an answer to keep: the same key runs again and succeeds."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    sim.set_faults(Faults(burst=1, error_status=503, path_prefix="/v3/"))
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            with pytest.raises(UpstreamError) as info:
                await client.call("push_plain", **push("w3", {"n": 1}), idempotency_key="k-503")
            assert await client.request("idempotency.get", {"key": "k-503"}) is None
            again = await client.call("push_plain", **push("w3", {"n": 1}), idempotency_key="k-503")
    assert info.value.status == 503
    assert (again.status, again.replayed) == (200, False)
    assert sim.stats.received["webhook"] == 2 and sim.row_count("w3") == 1
    assert await proc.stop() == 0


async def test_kill_9_while_held_at_clay_leaves_the_keys_in_doubt(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """kill -9 with three keyed pushes held at Clay; after the restart the keys are in doubt:
    the repeat-safe push runs again, the key_field push runs again with the key in its row
    (and in its Idempotency-Key header),
    the plain push is refused with what is known and never reaches Clay again."""
    proc = await started(kiln, simulator)
    sim = simulator.sim
    sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
    calls = {
        "push_safe": push("ws", {"n": 1}, idempotency_key="doubt-safe"),
        "push_keyed": push("wk", {"n": 1}, idempotency_key="doubt-keyed"),
        "push_plain": push("wp", {"n": 1}, idempotency_key="doubt-plain"),
    }
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client, trio.open_nursery() as nursery:

            async def held(operation: str) -> None:
                with pytest.raises(ConnectionLost):  # the daemon dies under it
                    await client.call(operation, retry_safe=False, **calls[operation])

            for operation in calls:
                nursery.start_soon(held, operation)
            await sim.wait_until(lambda s: s.stats.hanging == 3)
            await proc.kill()
        sim.clear_faults()
        await sim.wait_until(lambda s: s.stats.in_flight == 0)
        assert sim.stats.received["webhook"] == 3 and sim.stats.abandoned["webhook"] == 3
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            status = await idempotency_status(client)
            shown = await client.request("idempotency.get", {"key": "doubt-plain"})
            safe = await client.call("push_safe", **calls["push_safe"])
            keyed = await client.call("push_keyed", **calls["push_keyed"])
            with pytest.raises(IdempotencyInDoubt) as info:
                await client.call("push_plain", **calls["push_plain"])
            replayed = await client.call("push_keyed", **calls["push_keyed"])
    assert status["in_doubt_at_start"] == 3
    assert shown["state"] == "in_doubt" and "stopped" in shown["doubt"]
    assert (safe.status, keyed.status, replayed.replayed) == (200, 200, True)
    assert [row.body for row in sim.rows("wk")] == [{"n": 1, "kiln_key": "doubt-keyed"}]
    assert sim.rows("wk")[0].headers["idempotency-key"] == "doubt-keyed"
    assert sim.row_count("ws") == 1
    assert sim.row_count("wp") == 0
    assert sim.stats.received["webhook"] == 5  # 3 held + the two that were safe to repeat
    error = info.value
    assert error.sent == {"method": "POST", "path": "/v3/sources/webhook/wp"}
    assert error.started_at is not None
    (alert,) = proc.events("idempotency.in_doubt")
    assert (alert["alert"], alert["severity"], alert["count"]) == (True, "warning", 3)
    assert sorted(alert["keys"]) == ["doubt-keyed", "doubt-plain", "doubt-safe"]
    assert await proc.stop() == 0


async def test_the_sweeper_removes_expired_records_while_calls_go_on(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """600 records with a 1 s retention are swept in batches (several sweeps, each a bounded
    write) while new calls are answered; the store ends empty of them."""
    proc = await started(kiln, simulator)
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            async with trio.open_nursery() as nursery:
                for n in range(600):
                    nursery.start_soon(
                        lambda n=n: client.call(
                            "push_brief", **push("w9", {"n": n}), idempotency_key=f"sweep-{n}"
                        )
                    )
            answered = 0
            while (await idempotency_status(client))["swept"] < 600:
                result = await client.call(
                    "push_plain", **push("w8", {"n": answered}), idempotency_key=f"live-{answered}"
                )
                assert result.status == 200
                answered += 1
            status = await idempotency_status(client)
    assert status["swept"] == 600
    assert status["sweeps"] >= 3  # batches of at most 256
    assert status["records"] == answered > 0  # the live keys (24 h) stay
    assert await proc.stop() == 0
