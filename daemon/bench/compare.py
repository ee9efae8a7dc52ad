"""``kiln bench --compare FILE.json``: this run against a previous ``--json`` run.

Each scenario present in both runs is compared figure by figure:

- the headline ``ratio`` (higher is better, except for the scenarios in ``LOWER_RATIO_IS_BETTER``,
  whose ratio is a cost) and ``meets_target``: these two are judged. A ratio worse by more than
  the threshold (10 % by default), or a target met before and missed now, is a regression;
- the throughputs and latencies in ``details`` (``rps``, ``*_per_s``: higher is better;
  ``p50_ms`` ... ``max_ms``, ``*_us``: lower is better) are printed when they moved by more than
  the threshold, as information only: absolute figures move with the machine's load, which is
  why every scenario reports a ratio of two measurements made in the same run.

A scenario in only one of the runs, or one that failed, is listed as such and judged neither
way. Two runs whose CPUs idled differently (``machine.cpu_idle``: the cpuidle driver, its
polling, a CPU latency request held by ``--cpu-latency``) are still compared, with a warning: on
a virtual machine that alone moves the paced tail several-fold (``host.py``).
``compare_reports`` is pure (the tests feed it doctored reports); ``render`` makes the lines
``kiln bench`` prints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import attrs

__all__ = [
    "DEFAULT_THRESHOLD",
    "LOWER_RATIO_IS_BETTER",
    "Change",
    "Comparison",
    "compare_reports",
    "direction",
    "load_report",
    "render",
]

DEFAULT_THRESHOLD: Final = 0.10
# Scenarios whose headline ratio is a cost (1M jobs against 1k: lower is better).
LOWER_RATIO_IS_BETTER: Final = frozenset({"outbox-scale"})
LATENCY_KEYS: Final = frozenset({"p50_ms", "p90_ms", "p99_ms", "max_ms"})
MAX_DEPTH: Final = 6

Better = Literal["higher", "lower"]


@attrs.frozen
class Change:
    """One figure of one scenario in both runs."""

    scenario: str
    figure: str  # "ratio", "meets_target" or a path in details ("daemon.rps")
    before: Any
    after: Any
    better: Better | None
    judged: bool  # a regression here fails the comparison

    @property
    def relative(self) -> float | None:
        """``after / before - 1`` for numbers (None when it cannot be said)."""
        if not _number(self.before) or not _number(self.after) or self.before == 0:
            return None
        return float(self.after) / float(self.before) - 1.0

    def worse_by(self) -> float | None:
        """How much worse, as a fraction (negative: better); None when not comparable."""
        if self.figure == "meets_target":
            return 1.0 if self.before is True and self.after is False else 0.0
        rel = self.relative
        if rel is None or self.better is None:
            return None
        return -rel if self.better == "higher" else rel

    def regressed(self, threshold: float) -> bool:
        """Judged and worse by more than ``threshold`` (a target missed now: always)."""
        if self.figure == "meets_target":
            return self.before is True and self.after is False
        worse = self.worse_by()
        return self.judged and worse is not None and worse > threshold


@attrs.frozen
class Comparison:
    """What ``compare_reports`` found."""

    changes: list[Change]
    only_before: list[str]
    only_after: list[str]
    failed: list[str]  # in both, but failed in one of them
    threshold: float
    idle_differs: str | None = None  # how the CPUs idled in each run, when not alike

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regressed(self.threshold)]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def direction(key: str) -> Better | None:
    """Whether a details figure named ``key`` is better higher or lower (None: neither)."""
    if key == "rps" or key.endswith("_per_s"):
        return "higher"
    if key in LATENCY_KEYS or key.endswith("_us"):
        return "lower"
    return None


def _leaves(details: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, str, Any]]:
    """``(path, key, value)`` of every number with a direction in ``details``."""
    if depth > MAX_DEPTH or not isinstance(details, Mapping):
        return
    for key, value in details.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _leaves(value, path, depth + 1)
        elif _number(value) and direction(str(key)) is not None:
            yield path, str(key), value


def compare_reports(
    before: Mapping[str, Any], after: Mapping[str, Any], threshold: float = DEFAULT_THRESHOLD
) -> Comparison:
    """Compare two ``kiln bench --json`` reports (see the module docstring)."""
    old = {r.get("scenario"): r for r in before.get("results", []) if isinstance(r, Mapping)}
    new = {r.get("scenario"): r for r in after.get("results", []) if isinstance(r, Mapping)}
    changes: list[Change] = []
    failed: list[str] = []
    for name in [n for n in new if n in old]:
        a, b = old[name], new[name]
        if "error" in a or "error" in b:
            failed.append(str(name))
            continue
        better: Better = "lower" if name in LOWER_RATIO_IS_BETTER else "higher"
        changes.append(Change(str(name), "ratio", a.get("ratio"), b.get("ratio"), better, True))
        changes.append(
            Change(
                str(name), "meets_target", a.get("meets_target"), b.get("meets_target"), None, True
            )
        )
        then = {path: value for path, _, value in _leaves(a.get("details"))}
        for path, key, value in _leaves(b.get("details")):
            if path in then:
                changes.append(Change(str(name), path, then[path], value, direction(key), False))
    return Comparison(
        changes=changes,
        only_before=[str(n) for n in old if n not in new],
        only_after=[str(n) for n in new if n not in old],
        failed=failed,
        threshold=threshold,
        idle_differs=_idle_differs(before, after),
    )


IDLE_KEYS: Final = ("driver", "guest_halt_poll_ns", "cpu_latency_held_us")


def _idle(report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    machine = report.get("machine")
    idle = machine.get("cpu_idle") if isinstance(machine, Mapping) else None
    return idle if isinstance(idle, Mapping) else None


def _idle_differs(before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """A line saying how the two runs' CPUs idled, when both reports say and they differ."""
    a, b = _idle(before), _idle(after)
    if a is None or b is None:
        return None
    moved = [f"{k} {a.get(k)} -> {b.get(k)}" for k in IDLE_KEYS if a.get(k) != b.get(k)]
    if not moved:
        return None
    return "the runs' CPUs idled differently (" + ", ".join(moved) + "): compare with care"


def load_report(path: Path) -> dict[str, Any]:
    """A ``kiln bench --json`` report from ``path``; ``ValueError`` naming what is wrong."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"cannot read {path} as a kiln bench --json report: {exc}"
        raise ValueError(msg) from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        msg = f"{path} is not a kiln bench --json report (no results list)"
        raise ValueError(msg)
    return report


def _show(value: Any) -> str:
    if _number(value):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def render(comparison: Comparison, *, previous: str) -> list[str]:
    """The lines ``kiln bench --compare`` prints: every judged figure, the details that moved
    past the threshold, and a verdict."""
    threshold = comparison.threshold
    lines = [f"compared with {previous} (threshold {threshold:.0%})"]
    if comparison.idle_differs is not None:
        lines.append(f"  warning: {comparison.idle_differs}")
    for change in comparison.changes:
        worse = change.worse_by()
        moved = worse is not None and abs(worse) > threshold
        if not change.judged and not moved:
            continue
        rel = change.relative
        delta = "" if rel is None else f" ({rel:+.1%})"
        if change.regressed(threshold):
            mark = "REGRESSION"
        elif worse is not None and worse > threshold:
            mark = "worse"
        elif worse is not None and worse < -threshold:
            mark = "better"
        else:
            mark = "same"
        lines.append(
            f"  {change.scenario:<16} {change.figure:<28} {_show(change.before):>10} -> "
            f"{_show(change.after):<10}{delta}  {mark}"
        )
    for name in comparison.only_before:
        lines.append(f"  {name:<16} not run this time")
    for name in comparison.only_after:
        lines.append(f"  {name:<16} not in the previous run")
    for name in comparison.failed:
        lines.append(f"  {name:<16} failed in one of the runs: not compared")
    count = len(comparison.regressions)
    lines.append(
        f"{count} regression(s) past {threshold:.0%}"
        if count
        else f"no regression past the threshold ({threshold:.0%})"
    )
    return lines
