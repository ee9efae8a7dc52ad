"""Smoke tests of the idempotency scenarios of ``kiln bench`` (``replay``, ``call-idempotent``)
and the load generator's fresh argument per request. No assertion is about speed."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claykiln.daemon.bench.command import SCENARIOS, run_bench
from claykiln.daemon.bench.keyed import keyed_config
from claykiln.daemon.bench.load import LoadSpec
from claykiln.daemon.bench.measure import BenchOptions
from claykiln.daemon.config import load_config

RESULT_KEYS = {"scenario", "target", "ratio", "meets_target", "headline", "details", "notes"}


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short temp directory (AF_UNIX paths must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="kb-", dir="/tmp") as path:
        yield Path(path)


def _run(workdir: Path, name: str) -> dict[str, Any]:
    options = BenchOptions(duration=0.4, concurrency=4, workdir=workdir)
    item: dict[str, Any] = run_bench([name], options)["results"][0]
    assert "error" not in item, item.get("traceback")
    assert set(item) >= RESULT_KEYS and item["scenario"] == name
    json.dumps(item)
    return item


def test_both_scenarios_are_registered() -> None:
    """kiln bench --scenario replay / call-idempotent."""
    assert {"replay", "call-idempotent"} <= set(SCENARIOS)


def test_the_keyed_operation_requires_a_key(tmp_path: Path) -> None:
    """ping_keyed is ping with idempotency records required."""
    path = tmp_path / "kiln.toml"
    path.write_text(keyed_config("http://127.0.0.1:9", concurrency=4))
    ops = load_config(path, env={}, state_dir=tmp_path).operations
    assert (ops["ping"].idempotency, ops["ping_keyed"].idempotency) == ("off", "required")


def test_a_unique_argument_goes_on_the_command_line() -> None:
    """The generator process gets --unique-arg (empty: every frame the same)."""
    argv = LoadSpec(socket="/s", method="call", unique_arg="idempotency_key").argv()
    assert argv[argv.index("--unique-arg") + 1] == "idempotency_key"


@pytest.mark.timeout(90)
def test_replay_scenario_answers_only_replays(workdir: Path) -> None:
    """replay: after one call every keyed call is a replay; the baseline only rejections."""
    item = _run(workdir, "replay")
    details = item["details"]
    for name in ("replays", "paced", "paced_default"):  # paced: the busy-polling daemon's
        run = details[name]
        assert run["requests"] > 0 and run["codes"] == {"ok": run["requests"]}
        assert run["lost"] == 0
    rejections = details["rejections"]
    assert rejections["codes"] == {"breaker_open": rejections["requests"]}


@pytest.mark.timeout(120)
def test_call_idempotent_keeps_one_record_per_call(workdir: Path) -> None:
    """call-idempotent: every call with records got an answer and left one record."""
    item = _run(workdir, "call-idempotent")
    details = item["details"]
    keyed, plain = details["with_records"], details["without_records"]
    for run in (keyed, plain):
        assert run["requests"] > 0 and run["codes"] == {"ok": run["requests"]}
        assert run["lost"] == 0
    assert details["idempotency"]["records"] == keyed["requests"]
    assert details["direct"]["requests"] > 0
