"""The plumbing ``kiln bench`` scenarios share: options, the result shape, generator processes,
and A-B-B-A interleaving of two measurements so that a neighbour's load drifting during the run
hits both sides alike.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs

from claykiln.daemon.bench.load import LoadSpec
from claykiln.daemon.bench.procs import cpu_seconds

__all__ = [
    "BenchOptions",
    "Measure",
    "abba",
    "combine",
    "finish_generator",
    "result",
    "run_generator",
    "start_generator",
]

GENERATOR_SLACK: Final = 60.0  # seconds a load generator may take beyond its run time

Measure = Callable[[float], dict[str, Any]]


@attrs.frozen
class BenchOptions:
    """How long each measured run lasts, how many concurrent callers, where temp files go."""

    duration: float = 5.0
    concurrency: int = 64
    workdir: Path = Path("/tmp")
    max_requests_per_s: int = 500_000

    @property
    def max_requests(self) -> int:
        """The count bound of one measured run of ``duration`` seconds."""
        return max(1, int(self.max_requests_per_s * self.duration))


def result(
    scenario: str,
    *,
    target: str,
    ratio: float | None,
    meets_target: bool | None,
    headline: list[tuple[str, str]],
    details: dict[str, Any],
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """One scenario's result: ``scenario``, ``target``, ``ratio`` (the headline ratio or None),
    ``meets_target`` (None when there is no pass/fail), ``headline`` (``[label, value]`` pairs
    for the table), ``details`` (every figure measured) and ``notes``."""
    return {
        "scenario": scenario,
        "target": target,
        "ratio": None if ratio is None else round(ratio, 3),
        "meets_target": meets_target,
        "headline": [list(pair) for pair in headline],
        "details": details,
        "notes": notes or [],
    }


def start_generator(spec: LoadSpec) -> subprocess.Popen[bytes]:
    """The load generator as its own process (collect it with ``finish_generator``)."""
    return subprocess.Popen(spec.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_generator(proc: subprocess.Popen[bytes], spec: LoadSpec) -> dict[str, Any]:
    """Wait (bounded) for a generator from ``start_generator``; its figures. Raises
    ``RuntimeError`` if it failed and ``subprocess.TimeoutExpired`` (after killing it) if it
    overran its run time by ``GENERATOR_SLACK``."""
    try:
        out, err = proc.communicate(timeout=spec.seconds + GENERATOR_SLACK)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        msg = f"load generator failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}"
        raise RuntimeError(msg)
    figures: dict[str, Any] = json.loads(out)
    return figures


def run_generator(spec: LoadSpec, server_pid: int | None = None) -> dict[str, Any]:
    """Run one load in a generator process; with ``server_pid``, add the server's CPU time
    (``server_cpu_s``) and CPU per reply (``server_cpu_us``), the figure a noisy neighbour
    disturbs least."""
    before = cpu_seconds(server_pid) if server_pid else 0.0
    figures = finish_generator(start_generator(spec), spec)
    if server_pid:
        used = cpu_seconds(server_pid) - before
        figures["server_cpu_s"] = round(used, 3)
        served = figures["requests"]
        figures["server_cpu_us"] = round(used / served * 1e6, 2) if served else None
    return figures


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one side as one: counts and seconds summed, ``rps`` recomputed, latency
    percentiles the worst of the runs, CPU per request over all of them; ``runs`` kept."""
    requests = sum(run["requests"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    out: dict[str, Any] = {
        "requests": requests,
        "seconds": round(seconds, 3),
        "rps": round(requests / seconds, 1) if seconds > 0 else 0.0,
        "runs": runs,
    }
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        out[key] = max(run.get(key, 0.0) for run in runs)
    for key in ("errors", "lost", "issued"):
        if any(key in run for run in runs):
            out[key] = sum(run.get(key, 0) for run in runs)
    for key in ("codes", "statuses"):
        merged: dict[str, int] = {}
        for run in runs:
            for name, n in run.get(key, {}).items():
                merged[str(name)] = merged.get(str(name), 0) + n
        if any(key in run for run in runs):
            out[key] = merged
    for total, per in (("server_cpu_s", "server_cpu_us"), ("cpu_s", "cpu_us")):
        if all(total in run for run in runs):
            used = sum(run[total] for run in runs)
            out[total] = round(used, 3)
            out[per] = round(used / requests * 1e6, 2) if requests else None
    return out


def abba(
    first: Measure, second: Measure, seconds: float, *, rounds: int = 1
) -> tuple[dict[str, Any], ...]:
    """Measure ``first`` and ``second`` in the order A, B, B, A (``rounds`` times over), each
    side ``seconds`` in all, and return the two sides combined (``combine``): a load that
    drifts linearly over a round weighs on both alike, and more rounds of shorter runs average
    out a machine whose speed swings within seconds."""
    slice_s = seconds / (2 * rounds)
    firsts: list[dict[str, Any]] = []
    seconds_: list[dict[str, Any]] = []
    for _ in range(rounds):
        firsts.append(first(slice_s))
        seconds_.append(second(slice_s))
        seconds_.append(second(slice_s))
        firsts.append(first(slice_s))
    return combine(firsts), combine(seconds_)
