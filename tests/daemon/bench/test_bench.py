"""Smoke tests of ``kiln bench``: every scenario runs tiny and returns a well-formed result.

No assertion here is about speed: only shapes, counts and outcomes that hold on any machine.
Scenarios start real processes (daemon, echo server, simulator, nginx when installed) and load
generators, so these tests run on the real clock with a pytest-timeout bound each.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from claykiln.daemon.bench import command as bench_mod
from claykiln.daemon.bench import scenarios as bench_scenarios
from claykiln.daemon.bench.command import SCENARIOS, bench_command, run_bench
from claykiln.daemon.bench.load import LoadSpec, run_load
from claykiln.daemon.bench.measure import BenchOptions, abba
from claykiln.daemon.bench.naive import naive_retry_load
from claykiln.daemon.bench.procs import EchoProcess
from claykiln.daemon.simulator import Faults, open_simulator

RESULT_KEYS = {"scenario", "target", "ratio", "meets_target", "headline", "details", "notes"}


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short temp directory (AF_UNIX paths must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="kb-", dir="/tmp") as path:
        yield Path(path)


def _options(workdir: Path, concurrency: int = 4, duration: float = 0.3) -> BenchOptions:
    return BenchOptions(duration=duration, concurrency=concurrency, workdir=workdir)


def _well_formed(item: dict[str, Any], name: str) -> None:
    assert "error" not in item, item.get("traceback")
    assert set(item) >= RESULT_KEYS
    assert item["scenario"] == name
    assert item["meets_target"] in (True, False, None)
    assert all(len(pair) == 2 for pair in item["headline"])
    json.dumps(item)  # the whole result is JSON-able


@pytest.mark.timeout(60)
def test_writes_scenario_counts_both_modes(workdir: Path) -> None:
    """writes: both commit modes make acknowledged writes and group commit batches them."""
    item = run_bench(["writes"], _options(workdir))["results"][0]
    _well_formed(item, "writes")
    details = item["details"]
    assert details["group_commit"]["writes"] > 0
    assert details["single_commit"]["writes"] == details["single_commit"]["transactions"] > 0
    assert details["group_commit"]["transactions"] <= details["group_commit"]["writes"]


@pytest.mark.timeout(90)
def test_hello_scenario_measures_both_servers_in_both_modes(workdir: Path) -> None:
    """hello: each mode has a bare and a daemon run, every request answered ok, none lost."""
    item = run_bench(["hello"], _options(workdir))["results"][0]
    _well_formed(item, "hello")
    modes = item["details"]["modes"]
    assert set(modes) == {"connections", "pipelined"}
    for runs in modes.values():
        for server in ("bare", "daemon"):
            run = runs[server]
            assert run["requests"] == run["issued"] > 0
            assert run["codes"] == {"ok": run["requests"]}
            assert run["lost"] == 0
        assert runs["ratio"] > 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("nginx", [True, False], ids=["nginx-if-installed", "simulator"])
def test_call_scenario_compares_daemon_with_direct_httpx(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, nginx: bool
) -> None:
    """call: the daemon's calls and the direct requests all got an HTTP answer (either server)."""
    if not nginx:
        monkeypatch.setattr(bench_scenarios, "find_nginx", lambda: None)
    item = run_bench(["call"], _options(workdir))["results"][0]
    _well_formed(item, "call")
    daemon, direct = item["details"]["daemon"], item["details"]["direct"]
    assert daemon["requests"] > 0 and daemon["codes"] == {"ok": daemon["requests"]}
    assert daemon["lost"] == 0
    assert direct["requests"] > 0 and direct["errors"] == 0
    wire = item["details"]["wire"]
    assert wire["requests"] > 0 and wire["errors"] == 0
    assert item["details"]["wire_ratio"] == pytest.approx(daemon["rps"] / wire["rps"])
    if nginx and bench_scenarios.find_nginx() is not None:
        assert item["details"]["server"] == "nginx"
        assert daemon["statuses"] == {"200": daemon["requests"]}
    elif not nginx:
        assert item["details"]["server"] == "simulator"
        assert item["notes"]  # says the simulator bounds the figures


@pytest.mark.timeout(60)
def test_breaker_open_scenario_gets_only_rejections(workdir: Path) -> None:
    """breaker-open: with the breaker forced open every call is refused with breaker_open."""
    item = run_bench(["breaker-open"], _options(workdir))["results"][0]
    _well_formed(item, "breaker-open")
    for mode in ("connections", "paced"):
        load = item["details"][mode]
        assert load["requests"] > 0
        assert load["codes"] == {"breaker_open": load["requests"]}
        assert load["lost"] == 0


@pytest.mark.timeout(90)
def test_outage_scenario_counts_upstream_requests_of_both_clients(workdir: Path) -> None:
    """outage: the daemon's breaker opens; both clients' upstream requests are counted."""
    item = run_bench(["outage"], _options(workdir, concurrency=16, duration=0.5))["results"][0]
    _well_formed(item, "outage")
    daemon, naive = item["details"]["daemon"], item["details"]["naive"]
    assert daemon["breaker_opened_events"] >= 1
    assert daemon["upstream_requests"] >= 10  # the volume threshold is reached first
    assert naive["upstream_requests"] == naive["requests"] > 0
    assert set(naive["statuses"]) == {"503"}


def test_run_bench_refuses_unknown_scenarios(workdir: Path) -> None:
    """An unknown scenario name is refused before anything runs, naming the known ones."""
    with pytest.raises(ValueError, match="known: writes"):
        run_bench(["nope"], _options(workdir))


def test_a_failing_scenario_is_reported_and_the_next_one_runs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scenario that raises becomes an error entry; later scenarios still run."""

    def broken(options: BenchOptions) -> dict[str, Any]:
        raise RuntimeError("boom")

    def fine(options: BenchOptions) -> dict[str, Any]:
        return {"scenario": "fine"}

    monkeypatch.setitem(bench_mod.SCENARIOS, "writes", broken)
    monkeypatch.setitem(bench_mod.SCENARIOS, "hello", fine)
    results = run_bench(["writes", "hello"], _options(workdir))["results"]
    assert results[0]["error"] == "RuntimeError: boom"
    assert results[1]["scenario"] == "fine"
    assert all("load_average" in item for item in results)


@pytest.mark.timeout(60)
def test_bench_command_prints_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """kiln bench --json prints the report as JSON and exits 0 when every scenario ran."""

    def fake(options: BenchOptions) -> dict[str, Any]:
        return {"scenario": "writes", "duration": options.duration, "n": options.concurrency}

    monkeypatch.setitem(bench_mod.SCENARIOS, "writes", fake)
    outcome = CliRunner().invoke(
        bench_command(),
        ["--scenario", "writes", "--duration", "0.5", "--concurrency", "3", "--json"],
    )
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert report["results"][0] == {
        **report["results"][0],
        "scenario": "writes",
        "duration": 0.5,
        "n": 3,
    }
    # Every scenario the command offers is documented in docs/performance.md.
    perf = (Path(__file__).resolve().parents[3] / "docs" / "performance.md").read_text()
    assert {"writes", "hello", "call", "breaker-open", "outage"} <= set(SCENARIOS)
    for name in SCENARIOS:
        assert f"`{name}`" in perf, f"scenario {name} is not documented in performance.md"


@pytest.mark.timeout(60)
def test_paced_load_generator_sends_on_schedule(workdir: Path) -> None:
    """Paced mode spreads requests over every connection and stops at the count bound."""
    with EchoProcess(workdir / "echo", {"x": 1}) as echo:
        echo.start()
        spec = LoadSpec(
            socket=str(echo.socket),
            method="hello",
            mode="paced",
            concurrency=4,
            seconds=30.0,
            max_requests=200,
            rate=2000.0,
        )
        figures = run_load(spec)
    assert figures["issued"] == figures["requests"] == 200
    assert figures["behind"] == figures["lost"] == 0


@pytest.mark.timeout(60)
def test_load_generator_keeps_requests_in_flight_and_loses_none(workdir: Path) -> None:
    """The generator's pipelined mode gets every reply by msgid and respects the count bound."""
    with EchoProcess(workdir / "echo", {"x": 1}) as echo:
        echo.start()
        spec = LoadSpec(
            socket=str(echo.socket),
            method="hello",
            mode="pipelined",
            concurrency=8,
            seconds=30.0,
            max_requests=500,
        )
        figures = run_load(spec)
    assert figures["issued"] == figures["requests"] == 500
    assert figures["codes"] == {"ok": 500}
    assert figures["lost"] == 0


async def test_naive_client_tries_each_call_three_times_against_a_dead_upstream() -> None:
    """The naive client gives up after 3 attempts per call and keeps hammering."""
    async with open_simulator() as running:
        running.sim.set_faults(Faults(outage="unavailable"))
        with trio.fail_after(30):
            figures = await naive_retry_load(
                running.host,
                running.port,
                "/public/v0/me",
                concurrency=2,
                seconds=0.5,
                backoff=(0.01, 0.02),
            )
        assert figures["succeeded"] == 0
        assert figures["gave_up"] == figures["calls"] > 0
        assert figures["requests"] == running.sim.stats.clay_requests
        # Every finished call made 3 tries, except one per worker cut short by the time bound.
        assert 3 * (figures["calls"] - 2) <= figures["requests"] <= 3 * figures["calls"]
        assert figures["statuses"] == {"503": figures["requests"]}


def test_abba_alternates_in_rounds_and_gives_each_side_the_same_time() -> None:
    """A, B, B, A per round, each run an equal slice; each side's runs add up to ``seconds``."""
    order: list[tuple[str, float]] = []

    def side(name: str) -> Any:
        def measure(seconds: float) -> dict[str, Any]:
            order.append((name, seconds))
            return {"requests": 10, "seconds": seconds, "p99_ms": 1.0}

        return measure

    a, b = abba(side("a"), side("b"), 4.0, rounds=2)
    assert [name for name, _ in order] == list("abbaabba")
    assert {seconds for _, seconds in order} == {1.0}
    assert a["seconds"] == b["seconds"] == 4.0 and a["requests"] == b["requests"] == 40
    order.clear()
    abba(side("a"), side("b"), 4.0)
    assert order == [("a", 2.0), ("b", 2.0), ("b", 2.0), ("a", 2.0)]
