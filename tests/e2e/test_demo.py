"""`kiln demo` end to end: a real run's figures add up, the rich output tells the story, an
interrupted run leaves no process behind; plus the demo's pure figure-keeping."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from claykiln.daemon import BreakerOpen
from claykiln.daemon.demo.daemon import DemoDaemon
from claykiln.daemon.demo.model import (
    MAX_BUDGET,
    MIN_BUDGET,
    DemoError,
    DemoPlan,
    SimCounters,
    Tally,
    pacing_figures,
)
from claykiln.daemon.demo.sim import DemoSimulator
from claykiln.daemon.demo.watch import Watch

JSON_DURATION = "30"  # ~16 s here (2 s Retry-After and breaker reset)
SHORT_DURATION = "20"  # the shortest budget allowed; the same story, ~16 s
RUN_TIMEOUT = 90.0
CHILD_WAIT = 30.0


def _demo_command(*args: str) -> list[str]:
    """``python -m claykiln.daemon demo ...`` once the CLI has the command, else the module."""
    from claykiln.daemon.cli import main

    if "demo" in getattr(main, "commands", {}):
        return [sys.executable, "-m", "claykiln.daemon", "demo", *args]
    return [sys.executable, "-m", "claykiln.daemon.demo", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("KILN_SOCKET", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(name, None)
    env["COLUMNS"] = "120"
    return env


async def _run_demo(*args: str) -> trio.CompletedProcess[bytes]:
    with trio.fail_after(RUN_TIMEOUT):
        return await trio.run_process(
            _demo_command(*args), capture_stdout=True, capture_stderr=True, check=False, env=_env()
        )


def _gone(pid: int | None) -> bool:
    """The process no longer exists (reaped), or is a zombie awaiting init (it has exited)."""
    assert pid is not None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _calls_add_up(app: dict[str, Any]) -> None:
    answered = sum(app["statuses"].values())
    assert app["calls"] == answered + sum(app["errors"].values()), app
    assert app["ok"] == sum(n for s, n in app["statuses"].items() if s.startswith("2")), app


async def test_demo_json_summary_figures_are_consistent() -> None:
    """A real `kiln demo --json` exits 0 and every figure agrees with the others it implies."""
    done = await _run_demo("--json", "--duration", JSON_DURATION)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    summary = json.loads(done.stdout)
    assert summary["ok"] is True
    assert all(check["ok"] for check in summary["checks"]), summary["checks"]
    phases = summary["phases"]
    assert list(phases) == ["pacing", "rate_limit", "outage", "lanes"]
    for phase in phases.values():
        assert phase["complete"] is True
        _calls_add_up(phase["app"])
        for stage in phase["stages"].values():
            _calls_add_up(stage)
        assert phase["app"]["calls"] == sum(s["calls"] for s in phase["stages"].values())

    pacing = phases["pacing"]
    facts = pacing["facts"]
    assert facts["rows_stored_by_clay"] == facts["rows_acknowledged"] == 40
    assert pacing["app"]["statuses"] == {"200": 40}
    assert pacing["clay"]["responses"]["webhook"] == {"200": 40}  # no 429 at Clay either
    arrivals = facts["arrivals"]
    assert arrivals["rows"] == 40
    assert arrivals["peak_rows_per_1s"] <= 20 + 10 + 1  # Clay's bucket, from Clay's own clock

    limit = phases["rate_limit"]["facts"]
    limit_clay = phases["rate_limit"]["clay"]
    assert limit["clay_429"] == 1 and limit["app_429"] == 0
    assert limit_clay["responses"]["public"]["429"] == 1  # the Public API's 429, not a push's
    assert limit["gate"] == "clay-public" and limit["webhook_gate"] == "clay"
    assert limit["public_requests_during_closure"] == 0
    assert limit["public_calls_waiting_at_window_end"] == 6
    assert limit["waiting_calls_ok"] == 6
    assert limit["rate_limited"] == 5 and limit["rate_limited_gates"] == ["clay-public"]
    assert limit["retried_call_attempts"] == 2
    sighting = limit["gate_sighting"]
    assert sighting is not None and sighting["gate"] == "clay-public"
    assert sighting["reason"] == "429 from me"
    # The webhook pushes went on during the Public API's closure, on their own gate.
    pushes = limit["pushes_during_closure"]
    assert limit["webhook_requests_during_closure"] > 0
    assert pushes["calls"] == pushes["ok"] == limit["rows_stored_by_clay"] > 0
    assert limit["webhook_gate_closures_seen"] == 0
    assert limit_clay["responses"]["webhook"] == {"200": pushes["ok"]}
    closures = summary["gate_closures"]
    assert [(g["fields"]["gate"], g["fields"]["reason"]) for g in closures] == [
        ("clay-public", "429 from me")
    ]
    assert closures[0]["fields"]["upstream"] == "clay-public"  # the deprecated alias
    assert closures[0]["fields"]["retry_after"] == summary["plan"]["retry_after_s"]
    assert {s["gate"] for s in summary["gate_sightings"]} == {"clay-public"}

    outage = phases["outage"]["facts"]
    during = phases["outage"]["stages"]["during the outage"]
    assert outage["app_calls_during_outage"] == during["calls"]
    assert outage["refused_breaker_open"] == during["errors"]["breaker_open"] > 0
    assert outage["clay_requests_during_outage"] * 3 <= during["calls"]
    assert outage["clay_503"] == outage["clay_requests_during_outage"]
    events = [t["event"] for t in outage["breaker_transitions"]]
    assert events[0] == "breaker.opened" and events[-1] == "breaker.closed"
    assert events.count("breaker.opened") == 2  # the first opening, then a failed probe
    assert outage["breaker_state_at_end"] == "closed"
    assert [t["event"] for t in summary["breaker_transitions"]] == events

    lanes = phases["lanes"]["facts"]
    assert lanes["lane_full"] > 0
    assert lanes["lane_full"] + lanes["bulk_ok"] == 30
    assert lanes["bulk_ok"] == lanes["rows_stored_by_clay"]
    assert lanes["bulk_lane"]["rejected_by_daemon"] == lanes["lane_full"]
    assert lanes["bulk_lane"]["peak_active"] <= 2 and lanes["bulk_lane"]["peak_queued"] <= 8
    assert lanes["critical_ok"] == 5

    webhook_rows = sum(
        p["clay"]["responses"].get("webhook", {}).get("200", 0) for p in phases.values()
    )
    assert summary["clay_totals"]["responses"]["webhook"]["200"] == webhook_rows
    assert summary["daemon"]["exit_code"] == 0
    assert _gone(summary["daemon"]["pid"]) and _gone(summary["simulator"]["pid"])
    assert not Path(summary["temp_dir"]).exists()


async def test_demo_rich_output_tells_the_story_and_keep_keeps_the_files() -> None:
    """Without --json the demo prints each phase, the summary and the explanation; --keep keeps
    the config, the daemon's log and the simulator's log."""
    done = await _run_demo("--duration", SHORT_DURATION, "--keep")
    out = done.stdout.decode(errors="replace")
    kept = re.search(r"kept the demo's files in (\S+)", out)
    try:
        assert done.returncode == 0, out[-3000:] + done.stderr.decode(errors="replace")[-2000:]
        for title in ("1. Pacing", "2. A 429", "3. Outage", "4. Lanes", "Summary", "Checks"):
            assert title in out, title
        assert "What you just saw" in out
        assert "all checks passed" in out
        assert "✗" not in out
        assert kept is not None
        root = Path(kept.group(1))
        config = (root / "kiln.toml").read_text()
        assert "[upstreams.clay]" in config and "[gates.clay-public]" in config
        assert "webhook pushes, paced by their own gate, keep" in " ".join(out.split())
        assert '"event": "daemon.ready"' in (root / "kiln.log").read_text()
        assert "listening on http://127.0.0.1:" in (root / "simulator.log").read_text()
    finally:
        if kept is not None:
            shutil.rmtree(kept.group(1), ignore_errors=True)


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (trio spawns from a worker thread: scan every ppid)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except FileNotFoundError:
        return []


def _webhook_requests(root: Path) -> int:
    """Webhook requests the demo's simulator has seen so far (0 while it is not up yet)."""
    try:
        port = int((root / "sim.port").read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=5) as answer:
            return int(json.loads(answer.read())["received"].get("webhook", 0))
    except (FileNotFoundError, ValueError, OSError):
        return 0


async def test_interrupted_demo_stops_both_processes_and_cleans_up() -> None:
    """Ctrl-C (SIGINT to the demo only) in the middle of phase 1: exit 130, the daemon and the
    simulator are reaped and the temp dir is removed."""
    proc = await trio.lowlevel.open_process(
        _demo_command("--json", "--duration", SHORT_DURATION),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    try:
        with trio.fail_after(CHILD_WAIT):
            while True:  # both children up, and the app's pushes reaching Clay
                kids = _children(proc.pid)
                serving = [k for k in kids if "serve" in _cmdline(k)]
                if len(kids) == 2 and serving:
                    args = _cmdline(serving[0])
                    root = Path(args[args.index("--config") + 1]).parent
                    if await trio.to_thread.run_sync(_webhook_requests, root) > 0:
                        break
                await trio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(RUN_TIMEOUT):
            code = await proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            await proc.wait()
    assert code == 130
    assert all(_gone(kid) for kid in kids)
    assert not root.exists()


async def test_a_daemon_that_cannot_start_is_a_demo_error(tmp_path: Path) -> None:
    """A config the daemon refuses: start raises DemoError quoting the daemon's reason, reaped."""
    daemon = DemoDaemon(tmp_path, '[daemon]\nlog_format = "fancy"\n')
    with trio.fail_after(30), pytest.raises(DemoError, match="log_format"):
        await daemon.start()
    assert daemon.proc is not None and daemon.proc.returncode is not None


# -- the demo's figure-keeping (pure) -----------------------------------------------------------


def test_pacing_figures_of_a_burst_then_a_steady_rate() -> None:
    """20 rows at once then one per 100 ms: burst 20, steady 10/s, at most 29 in any second."""
    arrivals = [i * 0.001 for i in range(20)] + [0.1 * k for k in range(1, 21)]
    figures = pacing_figures(arrivals, rate=10.0)
    assert figures["rows"] == 40
    assert figures["burst_rows"] == 20
    assert figures["steady_rows_per_s"] == pytest.approx(10.0, rel=0.01)
    assert figures["peak_rows_per_1s"] == 29
    assert figures["span_s"] == pytest.approx(2.0)
    assert pacing_figures([], rate=10.0) == {"rows": 0}


def test_sim_counters_read_stats_and_subtract() -> None:
    """Counters come from /_sim/stats without control requests; minus keeps only what changed."""
    before = SimCounters.from_stats(
        {"received": {"webhook": 3, "control": 9}, "responses": {"webhook": {"200": 3}}}
    )
    after = SimCounters.from_stats(
        {
            "received": {"webhook": 5, "public": 2, "control": 30},
            "responses": {"webhook": {"200": 4, "429": 1}, "public": {"503": 2}},
        }
    )
    delta = after.minus(before)
    assert delta.received == {"webhook": 2, "public": 2}
    assert delta.requests == 4
    assert delta.answered(429) == 1 and delta.answered(503, "public") == 2
    assert delta.answered(503, "webhook") == 0
    assert delta.to_json()["responses"] == {"public": {"503": 2}, "webhook": {"200": 1, "429": 1}}


def test_plan_budget_is_clamped_and_picks_the_profile() -> None:
    """Budgets are clamped to the allowed range; long ones get 3 s closures and resets."""
    assert DemoPlan.from_budget(5).budget == MIN_BUDGET
    assert DemoPlan.from_budget(500).budget == MAX_BUDGET
    short, full = DemoPlan.from_budget(MIN_BUDGET), DemoPlan.from_budget(45)
    assert (short.closure, short.reset_timeout) == (2, 2.0)
    assert (full.closure, full.reset_timeout) == (3, 3.0)
    assert full.gate_burst == full.clay_burst  # the gate margin absorbs cold connections
    assert full.bulk_concurrency + full.bulk_queue < full.lane_burst  # phase 4 must overflow
    assert full.push_workers <= full.bulk_concurrency + full.bulk_queue  # phase 1 must not


async def test_tally_counts_answers_by_status_and_errors_by_code() -> None:
    """A tally counts 2xx as ok, other statuses by number, and KilnErrors by code."""
    tally = Tally()

    async def answer(status: int) -> dict[str, Any]:
        return {"status": status, "duration_ms": 1.5}

    async def refuse() -> dict[str, Any]:
        raise BreakerOpen("open", retry_after=2.0)

    for status in (200, 202, 429):
        await tally.run(answer(status))
    error = await tally.run(refuse())
    assert isinstance(error, BreakerOpen)
    assert (tally.calls, tally.ok) == (4, 2)
    assert tally.statuses == Counter({200: 1, 202: 1, 429: 1})
    assert tally.errors == Counter({"breaker_open": 1})
    assert tally.to_json()["retry_after_s"] == {"min": 2.0, "max": 2.0}


class _StatusScript:
    """A stand-in for the observer client: answers ``status`` from a list, one per poll."""

    def __init__(self, gates: list[dict[str, dict[str, Any]]]) -> None:
        self.gates = list(gates)

    async def status(self, timeout: float) -> dict[str, Any]:
        return {"gate": {"upstreams": self.gates.pop(0)}, "lanes": {"lanes": {}}}

    async def breaker_list(self, timeout: float) -> list[dict[str, Any]]:
        return []


async def test_watch_reads_each_gate_by_key_and_sights_each_closure(tmp_path: Path) -> None:
    """The watch reads gates by name ({} while unlisted) and keeps one sighting per closure per
    gate, even while another gate is closed."""
    closed = {"closed": True, "closed_for": 2.0, "reason": "429 from me", "waiting": 0}
    opened = {"closed": False, "paced": True, "tokens": 20.0}
    script = _StatusScript(
        [
            {"clay": opened},
            {"clay": opened, "clay-public": closed},
            {"clay": {**closed, "reason": "429 from push_row"}, "clay-public": closed},
            {"clay": opened, "clay-public": {"closed": False, "paced": False}},
            {"clay": opened, "clay-public": {**closed, "reason": "503 from me"}},
        ]
    )
    sim = DemoSimulator(tmp_path, api_key="k", rate=10.0, burst=20)  # never started: not polled
    watch = Watch(script, sim, t0=trio.current_time())
    await watch.poll()
    assert watch.gate("clay-public") == {} and watch.gate("clay")["tokens"] == 20.0
    for _ in range(4):
        await watch.poll()
    sightings = [(s.gate, s.reason) for s in watch.gate_sightings]
    assert sightings == [
        ("clay-public", "429 from me"),
        ("clay", "429 from push_row"),
        ("clay-public", "503 from me"),
    ]
    assert watch.gate_sighting("clay-public") is watch.gate_sightings[-1]
    assert watch.gate_sighting("other") is None


async def test_tally_answered_counts_answers_and_errors_not_calls_in_flight() -> None:
    """``answered`` counts calls that came back (any status or an error), not those pending."""
    tally = Tally()
    release = trio.Event()

    async def slow() -> dict[str, Any]:
        await release.wait()
        return {"status": 200}

    async def refuse() -> dict[str, Any]:
        raise BreakerOpen("open")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tally.run, slow())
            await tally.run(refuse())
            await trio.testing.wait_all_tasks_blocked()
            assert (tally.calls, tally.answered) == (2, 1)
            release.set()
    assert (tally.calls, tally.answered) == (2, 2)
