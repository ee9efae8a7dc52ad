"""``kiln bench --compare``: the pure comparison on doctored reports, and the CLI end to end
(``kiln bench --json`` over every quick scenario at a tiny duration, then a doctored baseline
that makes the next run a regression)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from claykiln.daemon.bench.command import (
    EXIT_REGRESSION,
    QUICK_SCENARIOS,
    SCENARIOS,
    SLOW_SCENARIOS,
    scenario_names,
)
from claykiln.daemon.bench.compare import compare_reports, direction, load_report, render

RESULT_KEYS = {"scenario", "target", "ratio", "meets_target", "headline", "details", "notes"}


def _report(**ratios: Any) -> dict[str, Any]:
    return {
        "results": [
            {
                "scenario": name,
                "ratio": ratio,
                "meets_target": True,
                "details": {"daemon": {"rps": 1000.0, "p99_ms": 2.0, "requests": 5000}},
            }
            for name, ratio in ratios.items()
        ]
    }


def test_a_worse_ratio_past_the_threshold_is_a_regression() -> None:
    """call's ratio down 20 % with a 10 % threshold regresses; hello's 5 % does not."""
    before = _report(call=1.5, hello=0.9)
    after = _report(call=1.2, hello=0.855)
    comparison = compare_reports(before, after, 0.10)
    assert [(c.scenario, c.figure) for c in comparison.regressions] == [("call", "ratio")]
    assert compare_reports(before, after, 0.25).regressions == []


def test_a_cost_ratio_regresses_when_it_grows() -> None:
    """outbox-scale's ratio is a cost: up is worse, down is better."""
    worse = compare_reports(_report(**{"outbox-scale": 1.5}), _report(**{"outbox-scale": 2.0}))
    better = compare_reports(_report(**{"outbox-scale": 2.0}), _report(**{"outbox-scale": 1.5}))
    assert [c.figure for c in worse.regressions] == ["ratio"]
    assert better.regressions == []


def test_a_target_missed_now_is_a_regression_whatever_the_threshold() -> None:
    """meets_target true before and false now regresses even with a huge threshold."""
    after = _report(call=1.5)
    after["results"][0]["meets_target"] = False
    comparison = compare_reports(_report(call=1.5), after, 5.0)
    assert [c.figure for c in comparison.regressions] == ["meets_target"]


def _idling(report: dict[str, Any], **idle: Any) -> dict[str, Any]:
    base = {"driver": "haltpoll", "governor": "haltpoll", "guest_halt_poll_ns": 0}
    report["machine"] = {"cpu_idle": {**base, "cpu_latency_held_us": None, **idle}}
    return report


def test_runs_whose_cpus_idled_differently_are_compared_with_a_warning() -> None:
    """A CPU latency held in one run only is named in a warning; nothing else changes."""
    before = _idling(_report(replay=1.0))
    after = _idling(_report(replay=1.0), cpu_latency_held_us=0)
    comparison = compare_reports(before, after)
    assert comparison.idle_differs == (
        "the runs' CPUs idled differently (cpu_latency_held_us None -> 0): compare with care"
    )
    assert comparison.regressions == []
    assert f"  warning: {comparison.idle_differs}" in render(comparison, previous="a.json")
    alike = compare_reports(before, _idling(_report(replay=1.0), governor="menu"))
    assert alike.idle_differs is None  # the governor alone is not judged a difference
    older = compare_reports(_report(replay=1.0), after)  # a report from before cpu_idle
    assert older.idle_differs is None
    assert not any("warning" in line for line in render(older, previous="a.json"))


def test_details_are_reported_but_never_judged() -> None:
    """A p99 twice as high is printed as worse but fails nothing (absolute figures are noisy)."""
    after = _report(call=1.5)
    after["results"][0]["details"]["daemon"]["p99_ms"] = 4.0
    comparison = compare_reports(_report(call=1.5), after)
    assert comparison.regressions == []
    lines = render(comparison, previous="old.json")
    assert any("daemon.p99_ms" in line and "worse" in line for line in lines)
    assert not any("daemon.requests" in line for line in lines)  # no direction: not shown
    assert lines[-1].startswith("no regression")


def test_scenarios_in_one_run_only_or_failed_are_listed_not_judged() -> None:
    """Missing, new and failed scenarios are named; none counts as a regression."""
    before = _report(call=1.5, hello=1.0, writes=3.0)
    after = _report(call=1.5, replay=2.0, writes=3.0)
    after["results"][2] = {"scenario": "writes", "error": "RuntimeError: boom"}
    comparison = compare_reports(before, after)
    assert (comparison.only_before, comparison.only_after, comparison.failed) == (
        ["hello"],
        ["replay"],
        ["writes"],
    )
    assert comparison.regressions == []


@pytest.mark.parametrize(
    ("key", "better"),
    [("rps", "higher"), ("replays_per_s", "higher"), ("p99_ms", "lower"), ("cpu_us", "lower")],
)
def test_directions(key: str, better: str) -> None:
    """Throughputs are better higher, latencies and CPU per request lower."""
    assert direction(key) == better


def test_scenario_names_expand_all_and_quick() -> None:
    """quick is every scenario but the slow ones; the order is SCENARIOS'; no duplicates."""
    assert scenario_names(()) == list(SCENARIOS)
    assert scenario_names(("quick",)) == list(QUICK_SCENARIOS)
    assert not set(QUICK_SCENARIOS) & SLOW_SCENARIOS
    assert scenario_names(("hello", "writes", "hello")) == ["writes", "hello"]


def test_load_report_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    """A file that is not JSON, or JSON without results, is a ValueError naming it."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        load_report(bad)
    bad.write_text('{"results": 3}')
    with pytest.raises(ValueError, match="no results list"):
        load_report(bad)


def _kiln_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "KILN_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "claykiln.daemon", "bench", *args],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )


@pytest.mark.timeout(600)
def test_bench_json_runs_every_quick_scenario_and_compare_flags_a_doctored_regression(
    tmp_path: Path,
) -> None:
    """``kiln bench --json --scenario quick`` at 0.2 s per run prints a well-formed report with
    every quick scenario; against a copy whose writes ratio was doctored 1000x better, the next
    run exits 3 naming the regression, and against itself it finds none."""
    tiny = ("--duration", "0.2", "--concurrency", "4")
    done = _kiln_bench("--json", "--scenario", "quick", *tiny, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert [item["scenario"] for item in report["results"]] == list(QUICK_SCENARIOS)
    for item in report["results"]:
        assert "error" not in item, item.get("traceback")
        assert set(item) >= RESULT_KEYS
        assert item["meets_target"] in (True, False, None)
    writes = next(item for item in report["results"] if item["scenario"] == "writes")
    assert writes["ratio"] > 0
    doctored = copy.deepcopy(report)
    for item in doctored["results"]:
        if item["scenario"] == "writes":
            item["ratio"] = writes["ratio"] * 1000  # far past any run-to-run noise
    (tmp_path / "baseline.json").write_text(json.dumps(doctored))
    (tmp_path / "same.json").write_text(json.dumps(report))
    flagged = _kiln_bench(
        "--json", "--scenario", "writes", *tiny, "--compare", "baseline.json", cwd=tmp_path
    )
    assert flagged.returncode == EXIT_REGRESSION, flagged.stderr.decode()[-3000:]
    json.loads(flagged.stdout)  # the report itself stays clean JSON on stdout
    err = flagged.stderr.decode()
    assert re.search(r"writes\s+ratio\s.*REGRESSION", err), err
    assert "regression(s) past 10%" in err
    assert "hello" in err and "not run this time" in err
    lenient = _kiln_bench(
        "--scenario", "writes", *tiny, "--compare", "same.json", "--threshold", "5", cwd=tmp_path
    )
    assert lenient.returncode == 0, lenient.stderr.decode()[-3000:]
    assert b"no regression" in lenient.stderr  # stdout is a pipe: it carries the JSON
    missing = _kiln_bench("--scenario", "writes", "--compare", "nope.json", cwd=tmp_path)
    assert missing.returncode == 2
