"""Breakers against a real daemon and the Clay simulator: the webhook's breaker apart from the
Public API's, and trip speed and recovery under load with the embedded default's breaker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import BreakerOpen, KilnError, TrioClient
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

PUBLIC_DOWN = Faults(error_rate=1.0, error_status=500, path_prefix="/public")

# The embedded default's upstream (daemon/config/default.toml): its breaker, retry and probe.
DEFAULT_LIKE = """\
[daemon]
log_format = "json"
log_level = "info"
grace_period = "5s"

[upstreams.clay]
base_url = "{base_url}"
auth = {{ header = "clay-api-key", credential = "clay-api-key" }}
rate = {{ per_second = 1000, burst = 1000 }}
breaker = {{ consecutive_failures = 5, consecutive_connect_failures = 3, error_threshold = 0.5, \
volume_threshold = 10, window = "10s", reset_timeout = "500ms", reset_backoff = 2, \
max_reset_timeout = "60s", reset_jitter = 0.1, healthy_period = "60s", half_open_probes = 1 }}
probe = {{ operation = "me", every = "30s" }}
retry = {{ attempts = 3, base = "250ms", cap = "10s", budget = 0.2, min_retries = 3 }}
timeouts = {{ connect = "2s", request = "5s", upload = "10s", long_poll = "10s" }}
max_connections = 64
"""


async def _views(client: TrioClient) -> dict[str, dict[str, Any]]:
    return {v["key"]: v for v in await client.breaker_list()}


async def test_a_public_api_storm_leaves_webhook_pushes_flowing(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """The embedded operations: 500s on `me` open breaker "clay" (the Public API's) while
    push_row, on its own breaker "clay-webhook", keeps reaching Clay."""
    proc = kiln(clay_config(simulator.url, consecutive=5))
    await proc.start()
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            views = await _views(client)
            assert {"clay", "clay-webhook"} <= set(views)
            sim.set_faults(PUBLIC_DOWN)
            for _ in range(5):
                with pytest.raises(KilnError):
                    await client.call("me")
            while (await _views(client))["clay"]["state"] != "open":
                await trio.sleep(0.02)
            with pytest.raises(BreakerOpen) as info:
                await client.call("me")
            assert info.value.details["breaker"] == "clay"
            for n in range(5):
                pushed = await client.call(
                    "push_row", path_params={"webhook_id": "w1"}, json={"n": n}
                )
                assert pushed["status"] == 200
            views = await _views(client)
    assert views["clay"]["state"] == "open"
    assert (views["clay-webhook"]["state"], views["clay-webhook"]["failures"]) == ("closed", 0)
    assert sim.row_count("w1") == 5
    opened = proc.events("breaker.opened")
    assert [(e["key"], e["reason"]) for e in opened] == [("clay", "consecutive_failures")]
    assert await proc.stop() == 0


CALLERS = 8
PERIOD = 0.05  # each caller calls every 50 ms: 160 calls/s
OUTAGE = 3.0


async def test_trips_fast_and_recovers_with_the_upstream(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """160 calls/s, then 500s for 3 s: the breaker opens within 0.5 s after at most 39 requests
    reached the dead API, callers fail fast meanwhile, and the probe of `me` brings the first
    success within 3 s of the API's return."""
    proc = kiln(DEFAULT_LIKE.format(base_url=simulator.url))
    await proc.start()
    sim = simulator.sim
    outcomes: list[tuple[float, float, str]] = []  # (start, seconds, "ok" or error code)
    with trio.fail_after(60):
        async with TrioClient(str(proc.socket)) as client:
            t0 = trio.current_time()
            down_at, up_at = t0 + 1.0, t0 + 1.0 + OUTAGE
            end = up_at + 3.0

            async def caller(offset: float) -> None:
                next_at = t0 + offset
                while next_at < end:
                    await trio.sleep_until(next_at)
                    start = trio.current_time()
                    try:
                        await client.call("poll_routine", path_params=_run())
                        code = "ok"
                    except KilnError as exc:
                        code = exc.code
                    outcomes.append((start, trio.current_time() - start, code))
                    next_at += PERIOD

            async with trio.open_nursery() as nursery:
                for n in range(CALLERS):
                    nursery.start_soon(caller, n * PERIOD / CALLERS)
                await trio.sleep_until(down_at)
                sim.set_faults(PUBLIC_DOWN)
                down_wall = time.time()
                before = sim.stats.received["public"]
                await trio.sleep_until(up_at)
                reached = sim.stats.received["public"] - before
                sim.clear_faults()
    opened = proc.events("breaker.opened")
    assert opened and opened[0]["reason"] == "consecutive_failures"
    opened_after = datetime.fromisoformat(opened[0]["timestamp"]).timestamp() - down_wall
    assert opened_after < 0.5, opened_after
    assert reached <= 39, reached
    during = [(s, d, c) for s, d, c in outcomes if down_at + 0.5 <= s < up_at]
    assert during and all(c == "breaker_open" for _, _, c in during)
    first_ok = min(s + d for s, d, c in outcomes if c == "ok" and s >= up_at)
    assert first_ok - up_at < 3.0
    assert proc.events("breaker.closed")
    assert await proc.stop() == 0
    figures = {"reached": reached, "opened_after_s": round(opened_after, 3)}
    figures["first_success_s"] = round(first_ok - up_at, 3)
    print(json.dumps(figures))


def _run() -> dict[str, str]:
    return {"routine_id": "r1", "run_id": "x1"}
