"""``kiln bench --scenario outage-peers``: the scenario run tiny, its peer, config and figures.

No assertion here is about speed: the scenario test checks the JSON's shape and that its counts
agree with each other and with the simulator's; the peer test pins the pybreaker + tenacity
model the daemon is compared with. Real processes and the real clock, with timeouts.
"""

from __future__ import annotations

import json
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from claykiln.daemon.bench.command import run_bench
from claykiln.daemon.bench.measure import BenchOptions
from claykiln.daemon.bench.peers_config import dump_toml, embedded_default_for, scale_durations
from claykiln.daemon.bench.peers_direct import DirectPeer, PeerPolicy
from claykiln.daemon.bench.peers_figures import outage_figures, restart_figures
from claykiln.daemon.simulator import DEFAULT_API_KEY, Faults, open_simulator

SIDES = ("peers", "daemon")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short temp directory (AF_UNIX paths must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="kbp-", dir="/tmp") as path:
        yield Path(path)


def _codes_total(codes: dict[str, int]) -> int:
    return sum(codes.values())


@pytest.mark.timeout(120)
def test_tiny_run_reports_consistent_counts_for_both_sides_and_the_restart(
    workdir: Path,
) -> None:
    """outage-peers at 1/50 scale: well-formed JSON whose counts agree with the simulator's."""
    options = BenchOptions(duration=0.1, concurrency=8, workdir=workdir)
    item = run_bench(["outage-peers"], options)["results"][0]
    assert "error" not in item, item.get("traceback")
    assert json.loads(json.dumps(item)) == item
    assert item["scenario"] == "outage-peers"
    assert item["meets_target"] in (True, False)
    assert all(len(pair) == 2 for pair in item["headline"])
    details = item["details"]
    assert details["processes"] == 2
    assert len(details["outages"]) == 2
    dead = {side: 0 for side in SIDES}
    for runs in details["outages"].values():
        assert set(runs) == set(SIDES)
        for side, run in runs.items():
            upstream = run["upstream"]
            assert all(run["checks"].values()), (side, run["checks"])
            sent = run["peer_upstream_requests" if side == "peers" else "daemon_upstream_requests"]
            assert upstream["requests"] == sent > 0
            assert upstream["dead_upstream"] + upstream["ok"] <= upstream["requests"]
            assert upstream["dead_upstream"] > 0  # the outage reached the upstream at all
            assert run["calls"] == _codes_total(run["codes"]) > 0
            during = run["during_outage"]
            assert during["calls"] == _codes_total(during["codes"]) <= run["calls"]
            assert during["p50_ms"] <= during["p99_ms"] <= during["max_ms"]
            for spread in (run["open_after_s"], run["first_success_after_s"]):
                assert 0 <= spread["processes"] <= details["processes"]
            dead[side] += upstream["dead_upstream"]
    peers_dead, daemon_dead = dead["peers"], dead["daemon"]
    assert item["ratio"] == pytest.approx(peers_dead / daemon_dead, abs=1e-3)
    restart = details["restart"]
    assert restart["operation"] == "me" and restart["repeat_safe"] is True
    assert restart["calls"] == _codes_total(restart["codes"]) > 0
    assert restart["errors"] == restart["calls"] - restart["codes"].get("ok", 0)
    assert restart["errors"] == _codes_total(restart["error_codes"])
    assert restart["restart_s"] >= 0.5  # it was down at least the 0.5 s before the restart
    assert set(details["targets"].values()) <= {True, False}


async def test_direct_peer_opens_after_fail_max_attempts_and_recovers_with_one_trial() -> None:
    """The peer: 5 failed attempts (3 tries, then 2) open its breaker, which stops the requests;
    after the reset timeout one successful trial call closes it."""
    # pybreaker's reset timeout is wall-clock: one long enough that the breaker is still open
    # for the calls after it opened however slow the machine (0.2 s could pass between them).
    policy = PeerPolicy(reset_timeout=60.0, backoff_base=0.001, backoff_cap=0.002)
    async with open_simulator() as running:
        url = f"http://{running.host}:{running.port}/public/v0/me"
        peer = DirectPeer(url, {"clay-api-key": DEFAULT_API_KEY}, policy)
        assert peer.breaker.reset_timeout == policy.reset_timeout
        call, close = peer.caller()
        try:
            with trio.fail_after(30):
                running.sim.set_faults(Faults(error_rate=1.0, error_status=500))
                failing = [await trio.to_thread.run_sync(call) for _ in range(4)]
                assert running.sim.stats.clay_requests == 5
                running.sim.clear_faults()
                # The reset timeout passes: shortened to what has already gone by, rather than
                # waited out.
                peer.breaker.reset_timeout = 0.0
                recovered = [await trio.to_thread.run_sync(call) for _ in range(2)]
        finally:
            close()
    assert failing == ["upstream_error", "breaker_open", "breaker_open", "breaker_open"]
    assert recovered == ["ok", "ok"]
    figures = peer.upstream_figures()
    assert figures == {
        "requests": 7,
        "statuses": {"200": 2, "500": 5},
        "connection_errors": 0,
    }


def test_direct_peer_refuses_other_than_plain_http_urls() -> None:
    """The peer names the URL it cannot call instead of failing later."""
    with pytest.raises(ValueError, match="https://x"):
        DirectPeer("https://x/me", {}, PeerPolicy())


def test_embedded_default_for_points_clay_at_the_simulator_and_round_trips() -> None:
    """The measured config is the embedded default with clay's base_url and JSON logs changed,
    and dump_toml writes it so that tomllib reads back the same tables."""
    config = embedded_default_for("http://127.0.0.1:1234")
    assert config["upstreams"]["clay"]["base_url"] == "http://127.0.0.1:1234"
    assert config["daemon"]["log_format"] == "json"
    assert tomllib.loads(dump_toml(config)) == config
    scaled = embedded_default_for("http://127.0.0.1:1234", scale=0.5)
    assert tomllib.loads(dump_toml(scaled)) == scaled
    assert scaled["operations"] == config["operations"]


def test_scale_durations_multiplies_durations_only() -> None:
    """Durations scale (in whole ms, at least 1 ms); numbers and other strings stay."""
    table = {"reset_timeout": "30s", "base": "250ms", "cap": "1m", "attempts": 3, "mode": "s"}
    assert scale_durations(table, 0.1) == {
        "reset_timeout": "3000ms",
        "base": "25ms",
        "cap": "6000ms",
        "attempts": 3,
        "mode": "s",
    }
    assert scale_durations({"base": "1ms"}, 0.01) == {"base": "1ms"}


def _process(*calls: tuple[float, float, str]) -> dict[str, Any]:
    return {"calls": [list(call) for call in calls]}


def test_outage_figures_time_the_first_refusal_and_success_per_process() -> None:
    """Open time and first success count from the outage's start and end, first and last
    process; a process that never saw one leaves ``last`` None; latency covers the outage."""
    a = _process((9.0, 9.01, "ok"), (10.1, 10.2, "upstream_error"), (10.3, 10.3002, "breaker_open"))
    b = _process((10.05, 10.5, "breaker_open"), (40.0, 40.25, "ok"), (41.0, 41.001, "ok"))
    figures = outage_figures([a, b], outage_start=10.0, outage_end=40.0)
    assert figures["open_after_s"] == {"first": 0.3, "last": 0.5, "processes": 2}
    assert figures["first_success_after_s"] == {"first": 0.25, "last": None, "processes": 1}
    during = figures["during_outage"]
    assert during["calls"] == 3
    assert during["codes"] == {"breaker_open": 2, "upstream_error": 1}
    assert during["max_ms"] == pytest.approx(450.0)
    assert figures["calls"] == 6 and figures["before_outage"]["calls"] == 1


def test_restart_figures_count_every_error_callers_saw() -> None:
    """Every call not answered ok is an error, by code; the restart's length is kill to READY."""
    a = _process((1.0, 1.001, "ok"), (2.0, 2.001, "daemon_unavailable"), (3.0, 3.002, "ok"))
    b = _process((1.9, 2.1, "connection_lost"), (2.95, 3.1, "ok"))
    figures = restart_figures([a, b], killed_at=2.0, ready_at=2.9)
    assert figures["errors"] == 2
    assert figures["error_codes"] == {"connection_lost": 1, "daemon_unavailable": 1}
    assert figures["restart_s"] == pytest.approx(0.9)
    assert figures["first_success_after_kill_s"] == {"first": 1.002, "last": 1.1, "processes": 2}
    assert figures["after_kill"]["calls"] == 4
