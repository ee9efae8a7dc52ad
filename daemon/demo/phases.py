"""The four phases of ``kiln demo``: pacing, a 429, an outage, a flooded lane.

The 429 phase lives in ``claykiln.daemon.demo.phase_429`` (re-exported here).

Each phase drives real traffic through the client library into the daemon process, steers the
Clay simulator process (settings, faults), and fills its ``Phase`` with what it counted:
tallies of the app's calls by stage, figures from the simulator's counters and rows, from the
daemon's status and log, and the checks those figures must pass. Every phase restores the
simulator's settings and clears its faults on the way out, whatever happened.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import trio

from claykiln.daemon.demo.context import BULK_TABLE, TABLE, DemoContext
from claykiln.daemon.demo.model import Phase, SimCounters, pacing_figures
from claykiln.daemon.demo.phase_429 import rate_limit
from claykiln.daemon.demo.watch import BREAKER_KEY, WAIT_SLACK, Watch, stuck_after

__all__ = [
    "PHASES",
    "PhaseFn",
    "lanes",
    "outage",
    "pacing",
    "rate_limit",
]

WEBHOOK_PATHS: Final = "/v3/sources/webhook/"
PUBLIC_PATHS: Final = "/public/"
QUIET: Final = "quiet: the breaker's window forgets the earlier calls"
BEFORE: Final = "before the outage"
DURING: Final = "during the outage"
HEALED_OPEN: Final = "healed, breaker waits out its reset timeout"
AFTER_CLOSE: Final = "after the breaker closed"
ROWS_STORED: Final = "rows stored by Clay"
HEAL_SLACK: Final = 1.0
"""Seconds a healed breaker may take past its open interval to close (the next caller's probe,
the watch's poll)."""


def rows_line(phase: Phase, watch: Watch, stored_before: int, rows: int) -> dict[str, str]:
    """The pacing panel's row count: the watch's latest poll while the phase runs, then the
    phase's own count (``rows_stored_by_clay``), the one its checks and summary quote."""
    stored = phase.facts.get("rows_stored_by_clay")
    if isinstance(stored, int):
        return {ROWS_STORED: f"{stored} / {rows}"}
    total, recent = watch.stored_per_s(TABLE)
    return {ROWS_STORED: f"{total - stored_before} / {rows} · {recent} in the last second"}


async def pacing(ctx: DemoContext, phase: Phase) -> None:
    """Push ``plan.rows`` rows as fast as the app can; the daemon paces them to Clay's limit."""
    plan, sim = ctx.plan, ctx.sim
    stored_before = await sim.row_count(TABLE)
    tally = phase.stage("pushes")
    numbers = iter(range(plan.rows))
    phase.live_fn = partial(rows_line, phase, ctx.watch, stored_before, plan.rows)

    async def worker() -> None:
        for n in numbers:  # shared by the workers: each row is pushed once
            await tally.run(ctx.push(TABLE, n))

    async with trio.open_nursery() as nursery:
        for _ in range(plan.push_workers):
            nursery.start_soon(worker)
    stored = await sim.row_count(TABLE) - stored_before
    figures = pacing_figures(await sim.arrivals(TABLE, after=stored_before), plan.rate)
    clay = await ctx.since(phase)
    phase.facts.update(
        rows_pushed=tally.calls,
        rows_acknowledged=tally.statuses[200],
        rows_stored_by_clay=stored,
        clay_429=clay.answered(429),
        app_429=tally.statuses[429],
        clay_limit={"per_second": plan.rate, "burst": plan.clay_burst},
        gate={
            "per_second": plan.rate,
            "burst": plan.gate_burst,
            "margin_s": plan.gate_margin,
            "tokens_at_once": plan.gate_tokens_at_once,
        },
        arrivals=figures,
    )
    phase.check(
        "pacing: every push accepted",
        tally.ok == plan.rows,
        f"{tally.ok} of {plan.rows} pushes answered 2xx",
    )
    phase.check(
        "pacing: Clay stored exactly the rows acknowledged",
        stored == tally.statuses[200],
        f"{stored} rows stored, {tally.statuses[200]} pushes answered 200",
    )
    phase.check(
        "pacing: no 429 anywhere",
        clay.answered(429) == 0 and tally.statuses[429] == 0,
        f"Clay answered 429 {clay.answered(429)} time(s); the app saw {tally.statuses[429]}",
    )
    peak = figures.get("peak_rows_per_1s", 0)
    phase.check(
        "pacing: arrivals within Clay's bucket",
        peak <= plan.clay_burst + plan.rate + 1,
        f"at most {peak} rows in any 1 s window (Clay's bucket: {plan.clay_burst} + "
        f"{plan.rate:g}/s)",
    )


async def outage(ctx: DemoContext, phase: Phase) -> None:
    """Clay's public API goes down while callers keep calling; the breaker opens, then heals.

    The breaker watched is the one that opens (the Public API's); once Clay heals, the callers'
    calls are tallied apart while that breaker still waits out its reset timeout, and again
    once it closed, so a refusal after healing is shown as the wait it is."""
    plan, sim, watch = ctx.plan, ctx.sim, ctx.watch
    stage = [QUIET]
    stop = trio.Event()
    marks: dict[str, SimCounters] = {}
    times: dict[str, float] = {}

    def live() -> dict[str, str]:
        return {"stage": stage[0]}

    phase.live_fn = live
    # Let the breaker's rolling window forget the earlier phases' calls: the error rate it acts
    # on is then this phase's alone, so how many requests reach Clay before it opens does not
    # depend on how busy phase 2 was.
    await trio.sleep(plan.breaker_window)
    stage[0] = BEFORE
    wall_start = time.time()

    async def caller() -> None:
        while not stop.is_set():
            tally = phase.stage(stage[0])
            await tally.run(ctx.me(deadline_ms=plan.caller_deadline_ms))
            await trio.sleep(plan.caller_pause)

    key = BREAKER_KEY
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(plan.callers):
                nursery.start_soon(caller)
            await trio.sleep(plan.healthy_lead)
            marks["outage"] = await sim.counters()
            stage[0] = DURING
            await sim.set_faults(outage="unavailable", path_prefix=PUBLIC_PATHS)
            with stuck_after(WAIT_SLACK, "the Public API's breaker to open"):
                await watch.wait_for(lambda w: bool(w.refusing_breakers()))
            key = watch.refusing_breakers()[0]
            # Clay stays down past the reset timeout: a half-open probe fails and the
            # breaker opens again, while the callers keep failing fast.
            probe = "a half-open probe to fail and reopen the breaker"
            with stuck_after(plan.reset_timeout + WAIT_SLACK, probe):
                await watch.wait_for(lambda w: _opened(ctx, key, wall_start) >= 2)
            await sim.clear_faults()
            times["healed"] = trio.current_time()
            marks["healed"] = await sim.counters()
            stage[0] = HEALED_OPEN
            healed = "the breaker to close again after healing"
            reopened_for = max(_open_intervals(ctx, key, wall_start), default=plan.reset_timeout)
            with stuck_after(reopened_for + WAIT_SLACK, healed):
                await watch.wait_for(lambda w: w.breaker_state(key) == "closed")
            times["closed"] = trio.current_time()
            stage[0] = AFTER_CLOSE
            await trio.sleep(plan.recovery_tail)
            stop.set()
    finally:
        with trio.CancelScope(shield=True):
            await sim.clear_faults()
    _outage_facts(ctx, phase, key, marks, times, wall_start)


def _outage_facts(
    ctx: DemoContext,
    phase: Phase,
    key: str,
    marks: dict[str, SimCounters],
    times: dict[str, float],
    wall_start: float,
) -> None:
    plan, watch = ctx.plan, ctx.watch
    during = marks["healed"].minus(marks["outage"])
    app_during = phase.stage(DURING)
    waiting, after = phase.stage(HEALED_OPEN), phase.stage(AFTER_CLOSE)
    transitions = [_transition(e) for e in ctx.breaker_events(key, wall_start)]
    intervals = [t["open_for_s"] for t in transitions if t["event"] == "breaker.opened"]
    # Healed right after the second opening (a failed probe): that opening's length, as the
    # daemon logged it, is what the callers had to wait out.
    reopened_for = float(intervals[1]) if len(intervals) > 1 else plan.reset_timeout
    opened = len(intervals)
    half_open = sum(1 for t in transitions if t["event"] == "breaker.half_open")
    closed = sum(1 for t in transitions if t["event"] == "breaker.closed")
    reset_wait = times["closed"] - times["healed"]
    state = watch.breaker_state(key)
    phase.facts.update(
        breaker=key,
        app_calls_during_outage=app_during.calls,
        refused_breaker_open=app_during.errors["breaker_open"],
        failed_upstream_error=app_during.errors["upstream_error"],
        clay_requests_during_outage=during.requests,
        clay_503=during.answered(503),
        reset_timeout_s=plan.reset_timeout,
        open_intervals_s=intervals,
        healed_breaker_open_for_s=round(reset_wait, 3),
        refused_after_healing=waiting.errors["breaker_open"],
        calls_after_close=after.calls,
        ok_after_close=after.ok,
        breaker_transitions=transitions,
        breaker_states_polled=watch.breaker_states.get(key, []),
        breaker_state_at_end=state,
    )
    phase.check(
        "outage: the breaker opened",
        opened >= 1,
        f"breaker {key}: breaker.opened logged {opened} time(s)",
    )
    phase.check(
        "outage: callers failed fast with breaker_open",
        app_during.errors["breaker_open"] > 0,
        f"{app_during.errors['breaker_open']} of {app_during.calls} calls refused at once",
    )
    phase.check(
        "outage: Clay was spared",
        during.requests * 3 <= app_during.calls,
        f"{during.requests} request(s) reached Clay for {app_during.calls} calls by the app",
    )
    phase.check(
        "outage: half-open probe, then closed",
        half_open >= 1 and closed >= 1 and state == "closed",
        f"half_open {half_open}x, closed {closed}x; state now {state}",
    )
    phase.check(
        "outage: after healing, refused only until the next probe",
        reset_wait <= reopened_for + HEAL_SLACK and after.ok == after.calls > 0,
        f"Clay healed while the breaker was open for {reopened_for:g} s after a failed probe; "
        f"it refused {waiting.errors['breaker_open']} call(s) for {reset_wait:.2f} s more, then "
        f"its next probe succeeded: {after.ok} of {after.calls} calls ok since",
    )


def _transition(event: dict[str, Any]) -> dict[str, Any]:
    """A breaker transition from the daemon's log; an opening carries how long it lasts."""
    out = {k: event.get(k) for k in ("event", "previous", "reason")}
    if event.get("event") == "breaker.opened":
        out["open_for_s"] = event.get("retry_after")
    return out


async def lanes(ctx: DemoContext, phase: Phase) -> None:
    """A burst of slow bulk pushes overflows the bulk lane; critical calls still go through."""
    plan, sim = ctx.plan, ctx.sim
    stored_before = await sim.row_count(BULK_TABLE)
    bulk = phase.stage("bulk pushes")
    critical = phase.stage("critical calls (me)")
    await ctx.watch.poll()
    rejected_before = int(ctx.watch.lane("bulk").get("rejected", 0))
    ctx.watch.lane_peaks.pop("bulk", None)  # the peaks of this phase only
    await sim.set_faults(latency=plan.lane_latency, path_prefix=WEBHOOK_PATHS)
    try:
        async with trio.open_nursery() as nursery:
            for n in range(plan.lane_burst):
                nursery.start_soon(bulk.run, ctx.push(BULK_TABLE, 2000 + n))
            with stuck_after(WAIT_SLACK, "the bulk lane to overflow"):
                await ctx.watch.wait_for(lambda w: bulk.errors["lane_full"] > 0)
            meanwhile = {k: ctx.watch.lane("bulk").get(k, 0) for k in ("active", "queued")}
            for _ in range(plan.critical_calls):
                await critical.run(ctx.me(deadline_ms=plan.caller_deadline_ms))
    finally:
        with trio.CancelScope(shield=True):
            await sim.clear_faults()
    await ctx.watch.poll()
    stored = await sim.row_count(BULK_TABLE) - stored_before
    peaks = ctx.watch.lane_peaks.get("bulk", {})
    phase.facts.update(
        bulk_lane={
            "concurrency": plan.bulk_concurrency,
            "queue": plan.bulk_queue,
            "peak_active": peaks.get("active", 0),
            "peak_queued": peaks.get("queued", 0),
            "rejected_by_daemon": int(ctx.watch.lane("bulk").get("rejected", 0)) - rejected_before,
        },
        lane_full=bulk.errors["lane_full"],
        bulk_ok=bulk.ok,
        rows_stored_by_clay=stored,
        clay_latency_s=plan.lane_latency,
        bulk_lane_during_critical_calls=meanwhile,
        critical_ok=critical.ok,
        critical_max_ms=round(max(critical.durations_ms, default=0.0), 1),
    )
    phase.check(
        "lanes: the flood was refused with lane_full",
        bulk.errors["lane_full"] > 0,
        f"{bulk.errors['lane_full']} of {plan.lane_burst} pushes refused at once",
    )
    phase.check(
        "lanes: admitted pushes all stored",
        bulk.ok == stored == plan.lane_burst - bulk.errors["lane_full"],
        f"{bulk.ok} pushes ok, {stored} rows stored",
    )
    phase.check(
        "lanes: critical calls unaffected",
        critical.ok == plan.critical_calls,
        f"{critical.ok} of {plan.critical_calls} ok while the bulk lane had "
        f"{meanwhile['active']} busy and {meanwhile['queued']} queued",
    )


def _opened(ctx: DemoContext, key: str, after: float) -> int:
    return sum(1 for e in ctx.breaker_events(key, after) if e.get("event") == "breaker.opened")


def _open_intervals(ctx: DemoContext, key: str, after: float) -> list[float]:
    """How long each opening of ``key`` since wall time ``after`` lasts (breaker.opened's
    retry_after in the daemon's log)."""
    return [
        float(e["retry_after"])
        for e in ctx.breaker_events(key, after)
        if e.get("event") == "breaker.opened" and isinstance(e.get("retry_after"), int | float)
    ]


PhaseFn = Callable[[DemoContext, Phase], Awaitable[None]]

PHASES: Final[tuple[tuple[str, str, str, PhaseFn], ...]] = (
    (
        "pacing",
        "1. Pacing",
        "The app pushes rows into a Clay table webhook as fast as it can. Clay takes 10 rows/s "
        "with a burst of 20 per workspace; the daemon's webhook gate (clay) paces every push to "
        "that limit.",
        pacing,
    ),
    (
        "rate_limit",
        "2. A 429",
        "Another tool ate the workspace's Public API budget: Clay answers 429 with Retry-After. "
        "Until then the daemon closes the Public API's gate (clay-public) for every Public API "
        "caller; webhook pushes, paced by their own gate, keep flowing. Nobody hammers Clay.",
        rate_limit,
    ),
    (
        "outage",
        "3. Outage",
        "Clay's public API goes down while the app keeps calling. The breaker opens; calls fail "
        "fast; after each reset timeout a half-open probe checks on Clay. Once Clay heals the "
        "breaker still refuses until its next probe, which succeeds and closes it.",
        outage,
    ),
    (
        "lanes",
        "4. Lanes",
        "A backfill floods the bulk lane with slow pushes. The lane takes what it can hold and "
        "refuses the rest at once with lane_full; critical calls have their own lane.",
        lanes,
    ),
)
