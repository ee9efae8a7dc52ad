"""Values of ``kiln demo``: the plan, call tallies, simulator counters, phases and checks.

Everything here is plain data and pure functions (no I/O, no awaits except ``Tally.run``, which
only awaits the call it is given). Every figure the demo prints is counted into these objects
from what really happened: client results, simulator counters and rows, daemon status and log.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from claykiln.daemon.client._errors import KilnError

__all__ = [
    "MAX_BUDGET",
    "MIN_BUDGET",
    "Check",
    "DemoError",
    "DemoPlan",
    "Phase",
    "SimCounters",
    "Tally",
    "pacing_figures",
]

MIN_BUDGET: Final = 20.0
"""Seconds: the shortest ``--duration`` that still fits every phase."""
MAX_BUDGET: Final = 50.0
"""Seconds: the hard cap; with the bounded shutdown the demo ends under a minute."""
FULL_PROFILE_BUDGET: Final = 40.0
"""From this budget on, the 429 closure and the breaker's reset timeout last 3 s; below it, 2 s
and 1 s, with fewer rows and a faster slow upstream."""
BURST_GAP: Final = 0.75
"""Intervals (1 / rate): the first gap at least this long between arrivals ends a burst."""
QUICK_RETRY_AFTER: Final = 1
"""Seconds: the quick plan's Retry-After, the shortest an HTTP delay-seconds value can say."""


class DemoError(Exception):
    """The demo could not run (a process did not start or died, a step broke); the message
    says what happened."""


@attrs.frozen
class DemoPlan:
    """What the demo does and the daemon config it generates; derived from the time budget.

    The simulator keeps Clay's documented webhook limit (``rate`` 10/s, ``clay_burst`` 20) and
    the daemon's webhook gate (``clay``) is configured the same, with an arrival-jitter
    ``gate_margin`` (150 ms of tokens, RatePolicy.margin) written into the generated config: the
    gate spends at most ``gate_tokens_at_once`` (18.5) of Clay's 20 tokens at once, so the
    slower first requests of a burst (cold connections) never meet a 429. The Public API's
    gate (``clay-public``, the embedded default's) does not pace; in phase 2 a Retry-After of
    ``closure`` seconds closes it while ``crowd_waiting`` dashboard calls wait,
    ``crowd_short_calls`` routine polls with ``short_deadline_ms`` are refused, and webhook
    pushes go on, one every ``1 / rate`` seconds.

    ``profile`` is "tour" (``from_budget``, what ``kiln demo`` runs) or "quick" (``quick``:
    the same phases and checks in about half the time, for tests).
    """

    budget: float
    profile: str = "tour"
    rows: int = 40
    push_workers: int = 6
    rate: float = 10.0
    clay_burst: int = 20
    gate_burst: int = 20
    gate_margin: float = 0.15
    closure: int = 2
    crowd_waiting: int = 6
    crowd_short_calls: int = 5
    short_deadline_ms: int = 300
    reset_timeout: float = 2.0
    volume_threshold: int = 5
    breaker_window: float = 2.0
    callers: int = 4
    caller_pause: float = 0.1
    caller_deadline_ms: int = 2000
    healthy_lead: float = 0.5
    recovery_tail: float = 0.5
    bulk_concurrency: int = 2
    bulk_queue: int = 8
    bulk_max_wait: float = 10.0
    lane_burst: int = 30
    lane_latency: float = 0.6
    critical_calls: int = 5

    @classmethod
    def from_budget(cls, budget: float) -> DemoPlan:
        """The plan for a ``--duration`` of ``budget`` seconds (clamped to the allowed range)."""
        budget = min(MAX_BUDGET, max(MIN_BUDGET, budget))
        if budget >= FULL_PROFILE_BUDGET:
            return cls(budget=budget, closure=3, reset_timeout=3.0)
        # The outage costs the reset timeout at least three times over (the daemon lengthens
        # each opening in a row), so a short budget gets a short reset and quicker phases.
        return cls(
            budget=budget,
            closure=2,
            reset_timeout=1.0,
            breaker_window=1.0,
            rows=30,
            lane_latency=0.4,
        )

    @classmethod
    def quick(cls, budget: float) -> DemoPlan:
        """The same story on a faster clock, for tests: a 1 s Retry-After and breaker reset, a
        0.5 s breaker window, fewer rows, quicker callers and a faster slow upstream."""
        return cls(
            budget=min(MAX_BUDGET, max(MIN_BUDGET, budget)),
            profile="quick",
            rows=25,
            closure=QUICK_RETRY_AFTER,
            reset_timeout=1.0,
            breaker_window=0.5,
            caller_pause=0.05,
            healthy_lead=0.15,
            recovery_tail=0.2,
            lane_latency=0.2,
        )

    @property
    def gate_tokens_at_once(self) -> float:
        """How many of its ``gate_burst`` tokens the webhook gate spends at once: the burst less
        ``gate_margin`` seconds of tokens kept in hand for network jitter (18.5 of 20)."""
        return self.gate_burst - self.gate_margin * self.rate

    def phase_bounds(self) -> dict[str, float]:
        """Seconds each phase may take before it is reported incomplete (generous: a loaded
        machine is slow, and a phase that ends early gives its time back)."""
        return {
            "pacing": self.rows / self.rate + 10.0,
            "rate_limit": self.closure + 12.0,
            "outage": self.breaker_window + 3 * self.reset_timeout + 12.0,
            "lanes": self.lane_latency * self.lane_burst / self.bulk_concurrency + 10.0,
        }


@attrs.define
class Tally:
    """What one group of the app's calls got back: statuses of answers, codes of errors."""

    calls: int = 0
    ok: int = 0
    statuses: Counter[int] = attrs.field(factory=Counter)
    errors: Counter[str] = attrs.field(factory=Counter)
    retry_after: list[float] = attrs.field(factory=list)
    durations_ms: list[float] = attrs.field(factory=list)

    async def run(self, call: Awaitable[dict[str, Any]]) -> dict[str, Any] | KilnError:
        """Await one client call and count its outcome; a ``KilnError`` is counted and returned."""
        self.calls += 1
        try:
            result = await call
        except KilnError as exc:
            self.errors[exc.code] += 1
            if exc.retry_after is not None:
                self.retry_after.append(exc.retry_after)
            return exc
        status = int(result.get("status", 0))
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.ok += 1
        duration = result.get("duration_ms")
        if isinstance(duration, int | float):
            self.durations_ms.append(float(duration))
        return result

    @property
    def answered(self) -> int:
        """Calls that came back so far (an answer of any status, or an error)."""
        return sum(self.statuses.values()) + sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        """``{calls, ok, statuses: {"200": n}, errors: {code: n}}`` plus hints when present."""
        out: dict[str, Any] = {
            "calls": self.calls,
            "ok": self.ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(sorted(self.errors.items())),
        }
        if self.retry_after:
            out["retry_after_s"] = {
                "min": round(min(self.retry_after), 3),
                "max": round(max(self.retry_after), 3),
            }
        if self.durations_ms:
            out["duration_ms"] = {
                "min": round(min(self.durations_ms), 1),
                "max": round(max(self.durations_ms), 1),
            }
        return out


@attrs.frozen
class SimCounters:
    """A copy of the simulator's exact counters: requests by path kind, answers by kind+status."""

    received: dict[str, int]
    responses: dict[tuple[str, int], int]

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> SimCounters:
        """The counters in a ``GET /_sim/stats`` answer (control requests excluded)."""
        received = {str(k): int(n) for k, n in stats.get("received", {}).items() if k != "control"}
        responses = {
            (str(kind), int(status)): int(n)
            for kind, by_status in stats.get("responses", {}).items()
            if kind != "control"
            for status, n in by_status.items()
        }
        return cls(received, responses)

    def minus(self, earlier: SimCounters) -> SimCounters:
        """What happened between ``earlier`` and this copy (zero entries dropped)."""
        received = {k: n - earlier.received.get(k, 0) for k, n in self.received.items()}
        responses = {k: n - earlier.responses.get(k, 0) for k, n in self.responses.items()}
        return SimCounters(
            {k: n for k, n in received.items() if n},
            {k: n for k, n in responses.items() if n},
        )

    @property
    def requests(self) -> int:
        """Requests that reached simulated Clay."""
        return sum(self.received.values())

    def answered(self, status: int, kind: str | None = None) -> int:
        """Answers with ``status`` (for one path kind, or all)."""
        return sum(n for (k, s), n in self.responses.items() if s == status and kind in (None, k))

    def to_json(self) -> dict[str, Any]:
        """``{requests, received: {kind: n}, responses: {kind: {status: n}}}``."""
        responses: dict[str, dict[str, int]] = {}
        for (kind, status), n in sorted(self.responses.items()):
            responses.setdefault(kind, {})[str(status)] = n
        return {
            "requests": self.requests,
            "received": dict(sorted(self.received.items())),
            "responses": responses,
        }


@attrs.frozen
class Check:
    """One expectation the demo verifies about what it just measured."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@attrs.define
class Phase:
    """One phase as it runs: its tallies by stage, figures, checks and simulator counters.

    A phase fills this progressively, so a phase cut short by its time bound still reports
    what it counted so far (``complete`` stays False).
    """

    name: str
    title: str
    story: str
    stages: dict[str, Tally] = attrs.field(factory=dict)
    facts: dict[str, Any] = attrs.field(factory=dict)
    checks: list[Check] = attrs.field(factory=list)
    live_fn: Callable[[], dict[str, str]] | None = None
    before: SimCounters | None = None
    clay: SimCounters | None = None
    complete: bool = False
    note: str = ""
    started: float = 0.0
    elapsed: float = 0.0

    def stage(self, name: str) -> Tally:
        """The tally of one group of calls in this phase, created on first use."""
        tally = self.stages.get(name)
        if tally is None:
            tally = self.stages[name] = Tally()
        return tally

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    @property
    def app(self) -> Tally:
        """Every stage's calls added together."""
        total = Tally()
        for tally in self.stages.values():
            total.calls += tally.calls
            total.ok += tally.ok
            total.statuses.update(tally.statuses)
            total.errors.update(tally.errors)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "complete": self.complete,
            "note": self.note,
            "elapsed_s": round(self.elapsed, 3),
            "app": self.app.to_json(),
            "stages": {name: t.to_json() for name, t in self.stages.items()},
            "clay": None if self.clay is None else self.clay.to_json(),
            "facts": self.facts,
            "checks": [c.to_json() for c in self.checks],
        }


def pacing_figures(arrivals: Sequence[float], rate: float) -> dict[str, Any]:
    """How paced a series of arrival times is (seconds, any clock).

    ``burst_rows``: the leading rows that arrived before the first gap of at least three
    quarters of an interval (1 / ``rate``): a gate holding 18.5 tokens lets 18 go at once and the
    19th half an interval later, then one per interval, so its burst counts 19 whatever the
    first rows' jitter; ``steady_rows_per_s``: one over the median gap after them;
    ``peak_rows_per_1s``: the most rows in any 1 s window; ``span_s``: first to last.
    """
    times = sorted(arrivals)
    out: dict[str, Any] = {"rows": len(times)}
    if not times:
        return out
    out["span_s"] = round(times[-1] - times[0], 3)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    burst = next((i + 1 for i, gap in enumerate(gaps) if gap >= BURST_GAP / rate), len(times))
    out["burst_rows"] = burst
    steady = sorted(gaps[burst:])
    if steady:
        median = steady[len(steady) // 2]
        out["steady_rows_per_s"] = round(1.0 / median, 2) if median > 0 else None
    peak, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    out["peak_rows_per_1s"] = peak
    return out
