"""The four phases of ``kiln demo``: pacing, a 429, an outage, a flooded lane.

The 429 and outage phases live in ``phase_429`` and ``phase_outage`` (re-exported here).

Each phase drives real traffic through the client library into the daemon process, steers the
Clay simulator process (settings, faults), and fills its ``Phase`` with what it counted:
tallies of the app's calls by stage, figures from the simulator's counters and rows, from the
daemon's status and log, and the checks those figures must pass. Every phase restores the
simulator's settings and clears its faults on the way out, whatever happened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import trio

from claykiln.daemon.demo.context import BULK_TABLE, TABLE, DemoContext
from claykiln.daemon.demo.model import Phase, pacing_figures
from claykiln.daemon.demo.phase_429 import rate_limit
from claykiln.daemon.demo.phase_outage import outage
from claykiln.daemon.demo.watch import WAIT_SLACK, Watch, stuck_after

__all__ = [
    "PHASES",
    "PhaseFn",
    "lanes",
    "outage",
    "pacing",
    "rate_limit",
]

WEBHOOK_PATHS: Final = "/v3/sources/webhook/"
ROWS_STORED: Final = "rows stored by Clay"


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
        "Clay's Public API goes down while the app keeps calling. Its breaker opens; calls fail "
        "fast; after each reset timeout a half-open probe checks on Clay. Once Clay heals the "
        "breaker still refuses until its next probe, which succeeds and closes it. Table "
        "webhooks have a breaker of their own: row pushes keep flowing all along.",
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
