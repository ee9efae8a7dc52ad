"""The circuit breaker end to end: a real daemon, the simulator over HTTP, the client library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import BreakerOpen, TrioClient, UpstreamError
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

FAILING = Faults(error_rate=1.0, error_status=503, path_prefix="/public")
HANGING = Faults(hang=True, path_prefix="/public")


async def _started(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, **kw))
    await proc.start()
    return proc


async def _view(client: TrioClient, key: str = "clay") -> dict[str, Any]:
    views = {v["key"]: v for v in await client.breaker_list()}
    return views[key]


async def _wait_state(client: TrioClient, state: str, key: str = "clay") -> dict[str, Any]:
    """Poll breaker.list until ``key`` is in ``state`` (bounded by the caller's fail_after)."""
    while True:
        view = await _view(client, key)
        if view["state"] == state:
            return view
        await trio.sleep(0.02)


async def _view_when(
    client: TrioClient, ready: Callable[[dict[str, Any]], bool], key: str = "clay"
) -> dict[str, Any]:
    """Poll breaker.list until ``ready(view)``: it answers from the board's snapshot, which takes
    in a call's outcome on the breaker actor's next pass, a moment after the call was answered
    (bounded by the caller's fail_after)."""
    while not ready(view := await _view(client, key)):
        await trio.sleep(0.02)
    return view


async def _wait_event(proc: KilnProcess, name: str, count: int = 1) -> list[dict[str, Any]]:
    while len(proc.events(name)) < count:
        await trio.sleep(0.02)
    return proc.events(name)


async def _fail_times(client: TrioClient, n: int) -> None:
    for _ in range(n):
        with pytest.raises(UpstreamError) as info:
            await client.call("me")
        assert info.value.status == 503


async def test_opens_at_volume_and_error_rate_then_fails_fast(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Below the volume or the error rate it stays closed; at both it opens and fails fast."""
    proc = await _started(kiln, simulator, volume=4)
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            for _ in range(3):
                assert (await client.call("me"))["status"] == 200
            sim.set_faults(FAILING)
            await _fail_times(client, 2)  # 5 calls, 40 % errors: below the 50 % threshold
            view = await _view_when(client, lambda v: v["calls"] == 5)
            assert (view["state"], view["calls"], view["failures"]) == ("closed", 5, 2)
            await _fail_times(client, 1)  # 6 calls, 50 %: trips
            await _wait_state(client, "open")
            seen = sim.stats.clay_requests
            for _ in range(5):
                with pytest.raises(BreakerOpen) as info:
                    await client.call("me")
                assert info.value.retry_after is not None
                assert 0 < info.value.retry_after <= 30 * 1.05  # reset_jitter 0.1: +/- 5 %
                assert info.value.details["breaker"] == "clay"
            assert sim.stats.clay_requests == seen  # nothing reached "Clay"
            # Every Public API operation shares the breaker (scope "upstream").
            with pytest.raises(BreakerOpen):
                await client.call("poll_routine", path_params={"routine_id": "r", "run_id": "x"})
            assert sim.stats.clay_requests == seen
            # The health monitor reads the breaker at its next interval (1 s).
            while (await client.status())["health"] != "degraded":
                await trio.sleep(0.05)
            opened = (await _wait_event(proc, "breaker.opened"))[0]
    assert opened["alert"] is True
    assert (opened["calls"], opened["failures"], opened["reason"]) == (6, 3, "error_rate")
    assert await proc.stop() == 0


async def test_half_open_admits_exactly_the_probes_then_closes_or_reopens(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Half-open lets exactly 2 concurrent probes through; success closes, failure re-opens."""
    proc = await _started(kiln, simulator, volume=4, reset="1s", probes=2)
    sim = simulator.sim
    sim.set_faults(FAILING)
    refused: list[BreakerOpen] = []
    answered: list[dict[str, Any]] = []
    with trio.fail_after(40):
        async with TrioClient(str(proc.socket)) as client:
            await _fail_times(client, 4)
            await _wait_state(client, "open")
            sim.set_faults(HANGING)
            await _wait_state(client, "half_open")
            before = sim.stats.received["public"]

            async def one() -> None:
                try:
                    answered.append(await client.call("me"))
                except BreakerOpen as exc:
                    refused.append(exc)

            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(one)
                await sim.wait_until(lambda s: s.stats.hanging >= 2)
                while len(refused) < 4:
                    await trio.sleep(0.01)
                # Both probes are held by the simulator; nobody else got through.
                assert sim.stats.received["public"] == before + 2
                assert sim.stats.hanging == 2
                assert (await _view(client))["probes_in_flight"] == 2
                sim.clear_faults()  # the probes succeed
            assert [r["status"] for r in answered] == [200, 200]
            assert all(e.retry_after is not None and e.retry_after > 0 for e in refused)
            await _wait_state(client, "closed")
            for _ in range(3):
                assert (await client.call("me"))["status"] == 200

            # Open again; this time the probe fails and the breaker re-opens at once.
            sim.set_faults(FAILING)
            await _fail_times(client, 3)  # 3 successes + 3 failures in the window: 50 %
            await _wait_state(client, "open")
            await _wait_state(client, "half_open")
            seen = sim.stats.clay_requests
            await _fail_times(client, 1)  # the probe reached the simulator and failed
            assert sim.stats.clay_requests == seen + 1
            await _wait_state(client, "open")
            with pytest.raises(BreakerOpen):
                await client.call("me")
            assert sim.stats.clay_requests == seen + 1
            reasons = [e["reason"] for e in await _wait_event(proc, "breaker.opened", 3)]
    assert reasons == ["error_rate", "error_rate", "probe_failed"]
    assert [e["reason"] for e in proc.events("breaker.closed")] == ["probes_succeeded"]
    assert await proc.stop() == 0


async def test_open_state_survives_a_restart(kiln: Factory, simulator: RunningSimulator) -> None:
    """An open breaker is still open after a restart: calls fail fast, Clay sees nothing."""
    proc = await _started(kiln, simulator, volume=4, reset="30s")
    sim = simulator.sim
    sim.set_faults(FAILING)
    with trio.fail_after(40):
        async with TrioClient(str(proc.socket)) as client:
            await _fail_times(client, 4)
            await _wait_state(client, "open")
        assert await proc.stop() == 0
        sim.clear_faults()  # Clay is healthy again, but the breaker must not hammer it early
        seen = sim.stats.clay_requests
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            view = await _view(client)
            assert view["state"] == "open"
            assert 0 < view["retry_after"] <= 30 * 1.05
            for _ in range(3):
                with pytest.raises(BreakerOpen) as info:
                    await client.call("me")
                assert info.value.retry_after is not None
                assert 0 < info.value.retry_after <= 30 * 1.05  # reset_jitter 0.1: +/- 5 %
    assert sim.stats.clay_requests == seen
    restored = proc.events("breaker.restored")
    assert restored and restored[-1]["state"] == "open"
    assert await proc.stop() == 0


async def test_force_open_closed_reset_via_the_client(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Forced open refuses without asking Clay; forced closed never trips; reset re-arms."""
    proc = await _started(kiln, simulator, volume=4)
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            view = await client.breaker_force("clay", "open")
            assert (view["state"], view["forced"]) == ("forced_open", True)
            seen = sim.stats.clay_requests
            with pytest.raises(BreakerOpen) as info:
                await client.call("me")
            assert info.value.retry_after is None  # only an operator reopens the flow
            assert sim.stats.clay_requests == seen

            assert (await client.breaker_force("clay", "closed"))["state"] == "forced_closed"
            sim.set_faults(FAILING)
            await _fail_times(client, 8)  # twice the volume, 100 % errors: still passes
            view = await _view_when(client, lambda v: v["failures"] == 8)
            assert (view["state"], view["failures"]) == ("forced_closed", 8)
            assert sim.stats.clay_requests == seen + 8

            assert (await client.breaker_force("clay", "reset"))["state"] == "closed"
            await _fail_times(client, 4)  # automatic again: trips at the volume
            await _wait_state(client, "open")
            with pytest.raises(BreakerOpen):
                await client.call("me")
            assert sim.stats.clay_requests == seen + 12
    forced = [e["state"] for e in proc.events("breaker.forced")]
    assert forced == ["forced_open", "forced_closed", "closed"]
    assert await proc.stop() == 0


def _kiln_cli() -> list[str]:
    script = Path(sys.executable).with_name("kiln")
    return [str(script)] if script.exists() else [sys.executable, "-m", "claykiln.daemon"]


async def _cli(socket: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, KILN_SOCKET=str(socket))
    with trio.fail_after(30):
        return await trio.run_process(
            [*_kiln_cli(), *args], env=env, capture_stdout=True, capture_stderr=True, check=False
        )


async def test_kiln_breaker_cli_forces_and_lists(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """`kiln breaker open|close|reset|list` over KILN_SOCKET change and show the real state."""
    proc = await _started(kiln, simulator)
    sim = simulator.sim
    opened = await _cli(proc.socket, "breaker", "open", "clay")
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout)["state"] == "forced_open"
    listed = await _cli(proc.socket, "breaker", "list")
    assert listed.returncode == 0, listed.stderr
    views = {v["key"]: v for v in json.loads(listed.stdout)}
    assert views["clay"]["state"] == "forced_open"
    assert views["clay"]["forced"] is True
    with trio.fail_after(10):
        async with TrioClient(str(proc.socket)) as client:
            with pytest.raises(BreakerOpen):
                await client.call("me")
    assert sim.stats.clay_requests == 0

    closed = await _cli(proc.socket, "breaker", "close", "clay")
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout)["state"] == "forced_closed"
    reset = await _cli(proc.socket, "breaker", "reset", "clay")
    assert reset.returncode == 0, reset.stderr
    assert json.loads(reset.stdout)["state"] == "closed"
    listed = await _cli(proc.socket, "breaker", "list", "--json")
    assert {v["key"]: v["state"] for v in json.loads(listed.stdout)}["clay"] == "closed"
    with trio.fail_after(10):
        async with TrioClient(str(proc.socket)) as client:
            assert (await client.call("me"))["status"] == 200

    unknown = await _cli(proc.socket, "breaker", "open", "nope")
    assert unknown.returncode == 1
    assert b"bad_request" in unknown.stderr and b"clay" in unknown.stderr
    assert await proc.stop() == 0


async def test_client_errors_never_open_the_breaker(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """404s and 400s from Clay are the caller's fault: they count as successes for health."""
    proc = await _started(kiln, simulator, volume=4)
    sim = simulator.sim
    sim.update_settings(attrs.evolve(sim.settings, auto_create_webhooks=False))
    sim.configure_webhook("w1")
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            for n in range(4):  # four different rows: identical ones would be replays
                missing = await client.call(
                    "push_row", path_params={"webhook_id": "missing"}, json={"a": n}
                )
                assert missing["status"] == 404
                garbled = await client.call(
                    "push_row",
                    path_params={"webhook_id": "w1"},
                    body=b"{not json %d" % n,
                    headers={"content-type": "application/json"},
                )
                assert garbled["status"] == 400
                assert garbled["attempts"] == 1
            no_run = await client.call(
                "poll_routine", path_params={"routine_id": "r1", "run_id": "run_nope"}
            )
            assert no_run["status"] == 404
            view = await _view_when(client, lambda v: v["calls"] == 1)
            assert (view["state"], view["calls"], view["failures"]) == ("closed", 1, 0)
            pushes = await _view(client, "clay-webhook")  # the webhook's own breaker
            assert (pushes["state"], pushes["failures"]) == ("closed", 0)
            assert pushes["calls"] >= 2  # 404 and 400 (identical pushes may be replays)
            ok = await client.call("push_row", path_params={"webhook_id": "w1"}, json={"a": 1})
            assert ok["status"] == 200
    assert sim.stats.responses["webhook", 404] == 4
    assert sim.stats.responses["webhook", 400] == 4
    assert sim.row_count("w1") == 1
    assert not proc.events("breaker.opened")
    assert await proc.stop() == 0


async def test_rejected_credentials_alert_and_do_not_open_the_breaker(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A 401 (wrong API key) logs upstream.credentials_rejected and never trips the breaker."""
    wrong_key = "wrong-api-key-5551234"
    proc = kiln(clay_config(simulator.url, volume=4))
    (proc.creds / "clay-api-key").write_text(wrong_key + "\n")
    await proc.start()
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            for _ in range(6):
                result = await client.call("me")
                assert result["status"] == 401
                assert result["attempts"] == 1
            view = await _view_when(client, lambda v: v["calls"] == 6)
            assert (view["state"], view["calls"], view["failures"]) == ("closed", 6, 0)
            alerts = await _wait_event(proc, "upstream.credentials_rejected", 6)
    assert simulator.sim.stats.responses["public", 401] == 6
    alert = alerts[0]
    assert alert["alert"] is True
    assert (alert["status"], alert["upstream"], alert["operation"]) == (401, "clay", "me")
    assert alert["severity"] == "critical"
    assert not proc.events("breaker.opened")
    assert wrong_key not in proc.log_text()
    assert await proc.stop() == 0
