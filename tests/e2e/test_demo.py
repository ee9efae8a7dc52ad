"""`kiln demo` end to end: a real run's figures add up, the rich output tells the story with the
same figures, an interrupted run leaves no process behind; plus the demo's pure figure-keeping
and wording.

The two full runs use the hidden ``--quick`` plan (``DemoPlan.quick``: the same phases and
checks on a faster clock, a 1 s Retry-After and breaker reset); the figures they expect are read
from that plan.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from claykiln.actors.gate import Bucket, RatePolicy
from claykiln.daemon import BreakerOpen
from claykiln.daemon.demo.daemon import DemoDaemon, demo_config, operation_breaker
from claykiln.daemon.demo.model import (
    MAX_BUDGET,
    MIN_BUDGET,
    DemoError,
    DemoPlan,
    Phase,
    SimCounters,
    Tally,
    pacing_figures,
)
from claykiln.daemon.demo.phase_outage import AFTER_CLOSE, DURING, HEALED_OPEN
from claykiln.daemon.demo.phases import rows_line
from claykiln.daemon.demo.render import breaker_text, gate_text
from claykiln.daemon.demo.sim import DemoSimulator
from claykiln.daemon.demo.story import explain, highlight
from claykiln.daemon.demo.watch import Watch

DURATION = "20"  # the shortest budget allowed; the quick plan ends in ~8 s of it
QUICK = DemoPlan.quick(float(DURATION))
WEBHOOK_BREAKER = operation_breaker(demo_config(QUICK, "http://127.0.0.1:1"), "push_row")
RUN_TIMEOUT = 90.0
KEPT = r"kept the demo's files in (\S+)"
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


class DemoRun:
    """One `kiln demo` process started in the background, its output going to files in
    ``directory``; ``finished`` waits for it (up to RUN_TIMEOUT), ``stop`` ends it if it runs.
    """

    def __init__(self, directory: Path, *args: str) -> None:
        directory.mkdir()
        self.stdout, self.stderr = directory / "stdout", directory / "stderr"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(_demo_command(*args), stdout=out, stderr=err, env=_env())

    async def finished(self) -> subprocess.CompletedProcess[bytes]:
        code = await trio.to_thread.run_sync(partial(self.proc.wait, RUN_TIMEOUT))
        return subprocess.CompletedProcess(
            self.proc.args, code, self.stdout.read_bytes(), self.stderr.read_bytes()
        )

    def stop(self) -> None:
        """Ctrl-C (the demo then stops its daemon and simulator), then SIGKILL if need be."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(CHILD_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DemoRun]]:
    """The two full runs, started together: each takes ~9 s, mostly waiting on its phases'
    clocks, so running them side by side halves the module's wall time."""
    root = tmp_path_factory.mktemp("demo-runs")
    runs = {
        "json": DemoRun(root / "json", "--json", "--quick", "--duration", DURATION),
        "rich": DemoRun(root / "rich", "--quick", "--duration", DURATION, "--keep"),
    }
    yield runs
    for run in runs.values():
        run.stop()
    kept = re.search(KEPT, runs["rich"].stdout.read_text(errors="replace"))
    if kept is not None:  # also when the rich test was not selected
        shutil.rmtree(kept.group(1), ignore_errors=True)


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


async def test_demo_json_summary_figures_are_consistent(demo_runs: dict[str, DemoRun]) -> None:
    """A real `kiln demo --json` exits 0 and every figure agrees with the others it implies."""
    done = await demo_runs["json"].finished()
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    summary = json.loads(done.stdout)
    assert summary["ok"] is True
    assert all(check["ok"] for check in summary["checks"]), summary["checks"]
    assert summary["plan"]["profile"] == "quick"
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
    rows = summary["plan"]["rows"]
    assert rows == QUICK.rows
    assert facts["rows_stored_by_clay"] == facts["rows_acknowledged"] == rows
    assert pacing["app"]["statuses"] == {"200": rows}
    assert pacing["clay"]["responses"]["webhook"] == {"200": rows}  # no 429 at Clay either
    arrivals = facts["arrivals"]
    assert arrivals["rows"] == rows
    assert arrivals["peak_rows_per_1s"] <= 20 + 10 + 1  # Clay's bucket, from Clay's own clock
    # The gate's figures are the plan's, and the plan's are what the daemon was configured with.
    assert facts["gate"] == {
        "per_second": 10.0,
        "burst": 20,
        "margin_s": 0.15,
        "tokens_at_once": summary["plan"]["gate_tokens_at_once"],
    }
    assert summary["plan"]["gate_tokens_at_once"] == pytest.approx(18.5)

    limit = phases["rate_limit"]["facts"]
    limit_clay = phases["rate_limit"]["clay"]
    assert limit["clay_429"] == 1 and limit["app_429"] == 0
    assert limit_clay["responses"]["public"]["429"] == 1  # the Public API's 429, not a push's
    assert limit["gate"] == "clay-public" and limit["webhook_gate"] == "clay"
    assert limit["public_requests_during_closure"] == 0
    assert limit["public_calls_waiting_at_window_end"] == QUICK.crowd_waiting
    assert limit["waiting_calls_ok"] == QUICK.crowd_waiting
    assert limit["rate_limited"] == QUICK.crowd_short_calls
    assert limit["rate_limited_gates"] == ["clay-public"]
    assert limit["retried_call_attempts"] == 2
    # The closure's length (the Retry-After, from the daemon's log) and what was left of it
    # when first seen are two figures, and the second is part of the first.
    closures = summary["gate_closures"]
    assert [(g["fields"]["gate"], g["fields"]["reason"]) for g in closures] == [
        ("clay-public", "429 from me")
    ]
    assert closures[0]["fields"]["upstream"] == "clay-public"  # the deprecated alias
    retry_after = closures[0]["fields"]["retry_after"]
    assert retry_after == limit["retry_after_s"] == summary["plan"]["retry_after_s"] == 1
    sighting = limit["gate_sighting"]
    assert sighting is not None and sighting["gate"] == "clay-public"
    assert sighting["reason"] == "429 from me"
    assert 0 < limit["gate_reopens_in_s_at_first_sight"] <= retry_after
    assert sighting["reopens_in_at_first_sight_s"] <= retry_after
    assert sighting["seen_closed_for_s"] <= retry_after
    # The webhook pushes went on during the Public API's closure, on their own gate.
    pushes = limit["pushes_during_closure"]
    assert limit["webhook_requests_during_closure"] > 0
    assert pushes["calls"] == pushes["ok"] == limit["rows_stored_by_clay"] > 0
    assert limit["webhook_gate_closures_seen"] == 0
    assert limit_clay["responses"]["webhook"] == {"200": pushes["ok"]}
    assert {s["gate"] for s in summary["gate_sightings"]} == {"clay-public"}

    outage_phase = phases["outage"]
    outage, stages = outage_phase["facts"], outage_phase["stages"]
    during = stages[DURING]
    assert outage["breaker"] == "clay"
    assert outage["app_calls_during_outage"] == during["calls"]
    assert outage["refused_breaker_open"] == during["errors"]["breaker_open"] > 0
    assert outage["clay_requests_during_outage"] * 3 <= during["calls"]
    assert outage["clay_503"] == outage["clay_requests_during_outage"]
    events = [t["event"] for t in outage["breaker_transitions"]]
    assert events[0] == "breaker.opened" and events[-1] == "breaker.closed"
    assert events.count("breaker.opened") == 2  # the first opening, then a failed probe
    assert outage["breaker_state_at_end"] == "closed"
    assert [t["event"] for t in summary["breaker_transitions"]] == events
    # After healing: refusals only while the breaker waited out its reset timeout, counted
    # apart; once it closed, every call passed.
    opened = [t for t in summary["breaker_transitions"] if t["event"] == "breaker.opened"]
    intervals = outage["open_intervals_s"]
    assert intervals == [t["fields"]["retry_after"] for t in opened]  # from the daemon's log
    assert len(intervals) == 2 and all(x > 0 for x in intervals)
    # The first interval is the reset timeout, give or take the daemon's jitter.
    assert outage["reset_timeout_s"] == QUICK.reset_timeout
    assert outage["refused_after_healing"] == stages[HEALED_OPEN]["errors"].get("breaker_open", 0)
    assert outage["healed_breaker_open_for_s"] <= intervals[1] + 1.0
    after = stages[AFTER_CLOSE]
    assert after["calls"] == after["ok"] == outage["ok_after_close"] > 0
    assert after["errors"] == {}
    # Table webhooks: on a breaker of their own (the embedded default's), rows kept flowing.
    assert outage["webhook_breaker"] == WEBHOOK_BREAKER
    if outage["breaker"] != WEBHOOK_BREAKER:
        pushes = outage["webhook_pushes_during_outage"]
        assert pushes["calls"] == pushes["ok"] == outage["rows_stored_during_outage"] > 0
        assert "open" not in outage["webhook_breaker_states"]

    lanes = phases["lanes"]["facts"]
    assert lanes["lane_full"] > 0
    assert lanes["lane_full"] + lanes["bulk_ok"] == QUICK.lane_burst
    assert lanes["bulk_ok"] == lanes["rows_stored_by_clay"]
    assert lanes["bulk_lane"]["rejected_by_daemon"] == lanes["lane_full"]
    assert lanes["bulk_lane"]["peak_active"] <= 2 and lanes["bulk_lane"]["peak_queued"] <= 8
    assert lanes["critical_ok"] == QUICK.critical_calls

    webhook_rows = sum(
        p["clay"]["responses"].get("webhook", {}).get("200", 0) for p in phases.values()
    )
    assert summary["clay_totals"]["responses"]["webhook"]["200"] == webhook_rows
    assert summary["daemon"]["exit_code"] == 0
    assert _gone(summary["daemon"]["pid"]) and _gone(summary["simulator"]["pid"])
    assert not Path(summary["temp_dir"]).exists()


def _plain(text: str) -> str:
    """Rich output as running text: panel borders dropped, wrapped lines joined."""
    return " ".join(text.replace("│", " ").split())


def _section(out: str, title: str, following: str) -> str:
    """The running text of the rich output between two headings."""
    start = out.index(title)
    return _plain(out[start : out.index(following, start)])


async def test_demo_rich_output_tells_the_story_and_keep_keeps_the_files(
    demo_runs: dict[str, DemoRun],
) -> None:
    """Without --json the demo prints each phase, the summary and the explanation, and where two
    lines give the same figure they give the same number; --keep keeps the config, the
    daemon's log and the simulator's log."""
    done = await demo_runs["rich"].finished()
    out = done.stdout.decode(errors="replace")
    kept = re.search(KEPT, out)
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
        text = _plain(out)
        assert "webhook pushes, paced by their own gate, keep" in text
        assert '"event": "daemon.ready"' in (root / "kiln.log").read_text()
        assert "listening on http://127.0.0.1:" in (root / "simulator.log").read_text()
    finally:
        if kept is not None:
            shutil.rmtree(kept.group(1), ignore_errors=True)

    # Pacing: the panel's last frame and the check count the same rows.
    pacing = _section(out, "1. Pacing", "2. A 429")
    panel = re.search(r"rows stored by Clay (\d+) / (\d+)", pacing)
    check = re.search(r"(\d+) rows stored, (\d+) pushes answered 200", pacing)
    assert panel is not None and check is not None, pacing
    assert panel.group(1) == panel.group(2) == check.group(1) == check.group(2)
    # Pacing: the burst is explained against Clay's, with the gate's jitter margin.
    assert "the gate spends at most 18.5 of those tokens at once (18 rows at once" in text
    assert "keeping 150 ms of tokens (1.5 rows at 10/s) in hand for network jitter" in text
    # 429: the closure's length and what was left of it are told apart, and agree.
    closure = re.search(
        r"Retry-After closed gate clay-public for (\S+) s, of which (\S+) s were left", text
    )
    assert closure is not None, text
    assert float(closure.group(1)) == QUICK.closure >= float(closure.group(2)) > 0
    assert re.search(r"closed for \d", text) is None  # the old wording that mixed them up
    assert f"Retry-After {QUICK.closure:g} s. The daemon closed" in text
    # Outage: the refusals after healing are the ones the panel counted in that stage, and
    # the text says the breaker was waiting out its reset timeout.
    outage = _section(out, "3. Outage", "4. Lanes")
    stage = re.search(
        r"app: healed, breaker waits out its reset timeout .*?(\d+)x breaker_open", outage
    )
    told = re.search(r"kept refusing for [0-9.]+ s \((\d+) calls, refused at once", text)
    assert stage is not None and told is not None, text
    assert stage.group(1) == told.group(1)
    assert "refused only until the next probe" in text
    if WEBHOOK_BREAKER != "clay":  # the outage's breaker: the Public API's
        flowed = re.search(
            rf"app: webhook pushes meanwhile \(breaker {WEBHOOK_BREAKER}\) (\d+) calls · (\d+) ok",
            outage,
        )
        said = re.search(
            rf"Table webhooks have a breaker of their own \({WEBHOOK_BREAKER}\), so the outage "
            r"never held row pushes back: (\d+) of (\d+) pushes",
            text,
        )
        assert flowed is not None and said is not None, outage
        assert flowed.group(1) == flowed.group(2) == said.group(1) == said.group(2)
    assert "It stayed open" in text and "then a half-open probe found Clay still down" in text


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
    simulator are reaped and the temp dir is removed. The tour's own plan, not the quick one:
    its first phase pushes rows for seconds, so the signal lands inside the run even when a
    loaded machine polls slowly (the whole quick plan once ended first, exiting 0)."""
    proc = await trio.lowlevel.open_process(
        _demo_command("--json", "--duration", DURATION),
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
    """Budgets are clamped to the allowed range; long ones get 3 s closures and resets, short
    ones 2 s and 1 s; the quick plan (for tests) has a 1 s Retry-After and fewer rows."""
    assert DemoPlan.from_budget(5).budget == MIN_BUDGET
    assert DemoPlan.from_budget(500).budget == MAX_BUDGET
    short, full = DemoPlan.from_budget(MIN_BUDGET), DemoPlan.from_budget(45)
    assert (short.closure, short.reset_timeout) == (2, 1.0)
    assert (full.closure, full.reset_timeout) == (3, 3.0)
    assert full.gate_burst == full.clay_burst  # the gate margin absorbs cold connections
    assert full.bulk_concurrency + full.bulk_queue < full.lane_burst  # phase 4 must overflow
    assert full.push_workers <= full.bulk_concurrency + full.bulk_queue  # phase 1 must not
    quick = DemoPlan.quick(5)
    assert (quick.budget, quick.profile, quick.closure) == (MIN_BUDGET, "quick", 1)
    assert quick.closure < short.closure and quick.rows < short.rows
    assert quick.gate_tokens_at_once == full.gate_tokens_at_once  # the same pacing story


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


# -- the demo's wording: each figure agrees with the one beside it (pure) ----------------------


async def test_rows_line_shows_the_phase_count_once_the_phase_counted(tmp_path: Path) -> None:
    """While pacing runs the panel shows the watch's latest poll; once the phase counted its
    rows, the panel's last frame shows that count, the one the checks and summary quote."""
    script = _StatusScript([{}])
    watch = Watch(script, DemoSimulator(tmp_path, api_key="k", rate=10.0, burst=20), t0=0.0)
    phase = Phase("pacing", "1. Pacing", "story")
    assert rows_line(phase, watch, 0, 30) == {
        "rows stored by Clay": "0 / 30 · 0 in the last second"
    }
    phase.facts["rows_stored_by_clay"] = 30
    assert rows_line(phase, watch, 0, 30) == {"rows stored by Clay": "30 / 30"}


def test_a_closed_gate_shows_what_is_left_of_its_closure() -> None:
    """The panel says "reopens in" (the status's countdown), never "closed for", which would
    read as the Retry-After; the phase's highlight gives both, named apart."""
    gate = {"closed": True, "closed_for": 0.1, "reason": "429 from me", "paced": False}
    text = gate_text({**gate, "limited": 5})
    assert "reopens in 0.1 s" in text and "closed for" not in text
    facts = {"retry_after_s": 3.0, "gate": "clay-public", "gate_reopens_in_s_at_first_sight": 2.98}
    assert highlight("rate_limit", facts).startswith(
        "Retry-After 3 s closed clay-public (2.98 s left when first seen)"
    )


def test_the_pacing_burst_is_the_gates_tokens_at_once(tmp_path: Path) -> None:
    """The demo's config gives the gate the plan's margin; the gate then admits 18.5 of Clay's
    20 tokens at once, so 19 rows go back to back (the 19th half an interval later)."""
    plan = DemoPlan.from_budget(45)
    policy = RatePolicy(per_second=plan.rate, burst=plan.gate_burst, margin=plan.gate_margin)
    assert plan.gate_tokens_at_once == pytest.approx(policy.tolerance * plan.rate + 1) == 18.5
    assert 'margin = "150ms"' in demo_config(plan, "http://127.0.0.1:1")
    bucket = Bucket(policy, 0.0)
    admitted = [bucket.reserve(0.0, None) for _ in range(30)]
    assert all(isinstance(at, float) for at in admitted)
    figures = pacing_figures([float(at) for at in admitted], plan.rate)
    assert figures["burst_rows"] == math.ceil(plan.gate_tokens_at_once) == 19
    assert figures["steady_rows_per_s"] == pytest.approx(plan.rate)


def test_explain_tells_each_figure_from_what_it_could_be_mistaken_for() -> None:
    """The summary's paragraphs explain the burst against Clay's (the margin), the closure's
    length against what was left of it, and the refusals after healing as the reset wait."""
    summary = {
        "phases": {
            "pacing": {
                "facts": {
                    "rows_pushed": 40,
                    "rows_stored_by_clay": 40,
                    "rows_acknowledged": 40,
                    "clay_429": 0,
                    "clay_limit": {"per_second": 10.0, "burst": 20},
                    "gate": {
                        "per_second": 10.0,
                        "burst": 20,
                        "margin_s": 0.15,
                        "tokens_at_once": 18.5,
                    },
                    "arrivals": {"burst_rows": 19, "steady_rows_per_s": 10.0},
                }
            },
            "rate_limit": {"facts": {"retry_after_s": 3.0, "gate": "clay-public"}},
            "outage": {
                "facts": {
                    "breaker": "clay",
                    "reset_timeout_s": 3.0,
                    "open_intervals_s": [3.0, 6.137],
                    "healed_breaker_open_for_s": 2.951,
                    "refused_after_healing": 115,
                    "ok_after_close": 19,
                    "calls_after_close": 19,
                    "webhook_breaker": "clay-webhook",
                    "webhook_pushes_during_outage": {"calls": 60, "ok": 60},
                    "rows_stored_during_outage": 60,
                    "webhook_breaker_states": ["closed"],
                }
            },
        }
    }
    pacing, limit, outage, _ = explain(summary)
    assert "Clay saw the first 19 arrive back to back" in pacing
    assert (
        "Clay's bucket holds 20; the gate spends at most 18.5 of those tokens at once "
        "(18 rows at once, the 19th 50 ms later)"
    ) in pacing
    assert "keeping 150 ms of tokens (1.5 rows at 10/s) in hand for network jitter" in pacing
    assert "Retry-After 3 s. The daemon closed the Public API's gate (clay-public) for" in limit
    assert "for those 3 s, for every Public API caller" in limit
    assert (
        "It stayed open 3 s (its reset timeout), then a half-open probe found Clay still down "
        "and it opened again, for 6.14 s (each opening in a row waits longer)."
    ) in outage
    assert "kept refusing for 2.95 s (115 calls, refused at once rather than failed)" in outage
    assert "19 of 19 calls ok since" in outage
    assert (
        "Table webhooks have a breaker of their own (clay-webhook), so the outage never held "
        "row pushes back: 60 of 60 pushes made meanwhile answered 2xx and 60 rows were stored; "
        "breaker clay-webhook: closed."
    ) in outage


def test_an_open_breaker_shows_it_waits_out_its_reset_timeout() -> None:
    """The panel's breaker line says an open breaker is waiting for its reset timeout."""
    view = {"state": "open", "retry_after": 1.24, "error_rate": 1.0, "calls": 6}
    assert "waits out its reset timeout: probe in 1.2 s" in breaker_text(view)
    assert "probe" not in breaker_text({"state": "closed", "error_rate": 0.0, "calls": 3})
