"""The four phases of ``kiln demo``: pacing, a 429, an outage, a flooded lane.

Each phase drives real traffic through the client library into the daemon process, steers the
Clay simulator process (settings, faults), and fills its ``Phase`` with what it counted:
tallies of the app's calls by stage, figures from the simulator's counters and rows, from the
daemon's status and log, and the checks those figures must pass. Every phase restores the
simulator's settings and clears its faults on the way out, whatever happened.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from .demo_context import BULK_TABLE, TABLE, DemoContext
from .demo_model import Phase, SimCounters, pacing_figures
from .demo_watch import stuck_after

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
CLOSURE_MARGIN: Final = 0.25
"""Seconds cut from the end of an observed gate closure when counting what reached Clay during
it (the status reply is a few ms old when read; the window must end before the reopening)."""
WAIT_SLACK: Final = 10.0
"""Seconds added to every wait for a state the daemon should reach (a loaded machine is slow)."""
RECOVERY_TAIL: Final = 0.5
"""Seconds the callers keep calling after the breaker closed, to show calls passing again."""


async def pacing(ctx: DemoContext, phase: Phase) -> None:
    """Push ``plan.rows`` rows as fast as the app can; the daemon paces them to Clay's limit."""
    plan, sim = ctx.plan, ctx.sim
    stored_before = await sim.row_count(TABLE)
    tally = phase.stage("pushes")
    numbers = iter(range(plan.rows))

    def live() -> dict[str, str]:
        total, recent = ctx.watch.stored_per_s(TABLE)
        done = total - stored_before
        return {"rows stored by Clay": f"{done} / {plan.rows} · {recent} in the last second"}

    phase.live_fn = live

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
        gate={"per_second": plan.rate, "burst": plan.gate_burst},
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


async def rate_limit(ctx: DemoContext, phase: Phase) -> None:
    """Clay answers one call 429 with Retry-After; the gate closes for every caller meanwhile."""
    plan, sim = ctx.plan, ctx.sim
    original = await sim.settings()
    # Another tool on the workspace has eaten the public API budget: one token, then one per
    # `closure` seconds, so Clay's 429 says Retry-After: closure.
    await sim.update_settings(public_rate=1.0 / plan.closure, public_burst=1)
    dashboard = phase.stage("dashboard (me)")
    waiting = phase.stage("pushes that wait")
    hurried = phase.stage(f"calls with a {plan.short_deadline_ms} ms deadline")
    retried: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:

            async def refresh_dashboard() -> None:
                for _ in range(2):
                    result = await dashboard.run(ctx.me())
                    if isinstance(result, dict):
                        retried.append(result)

            nursery.start_soon(refresh_dashboard)
            with stuck_after(plan.closure + WAIT_SLACK, "the gate to close after Clay's 429"):
                await ctx.watch.wait_for(lambda w: bool(w.gate().get("closed")))
            seen_at = trio.current_time()
            closed_for = float(ctx.watch.gate().get("closed_for", 0.0))
            before = (await sim.counters()).requests
            for n in range(plan.crowd_pushes):
                nursery.start_soon(waiting.run, ctx.push(TABLE, 1000 + n))
            for _ in range(plan.crowd_short_calls):
                nursery.start_soon(hurried.run, ctx.me(deadline_ms=plan.short_deadline_ms))
            window = max(0.0, closed_for - CLOSURE_MARGIN)
            await trio.sleep_until(seen_at + window)
            during = (await sim.counters()).requests - before
            await ctx.watch.poll()
            waiting_now = int(ctx.watch.gate().get("waiting", 0))
            queued_now = int(ctx.watch.lane("bulk").get("queued", 0))
    finally:
        with trio.CancelScope(shield=True):
            await sim.update_settings(
                public_rate=original["public_rate"], public_burst=original["public_burst"]
            )
    clay = await ctx.since(phase)
    sighting = ctx.watch.gate_sightings[-1].to_json() if ctx.watch.gate_sightings else None
    app_429 = sum(t.statuses[429] for t in phase.stages.values())
    phase.facts.update(
        retry_after_s=plan.closure,
        gate_closed_for_s=round(closed_for, 3),
        gate_sighting=sighting,
        callers_waiting_at_the_gate=waiting_now,
        pushes_queued_in_the_bulk_lane=queued_now,
        clay_requests_during_closure=during,
        closure_window_s=round(window, 3),
        clay_429=clay.answered(429),
        app_429=app_429,
        rate_limited=hurried.errors["rate_limited"],
        retried_call_attempts=max((r.get("attempts", 1) for r in retried), default=0),
    )
    phase.check(
        "429: Clay's Retry-After closed the gate",
        closed_for > 0 and clay.answered(429) >= 1,
        f"Clay answered 429 {clay.answered(429)} time(s); the gate was seen closed for "
        f"{closed_for:.2f} s more",
    )
    phase.check(
        "429: nothing reached Clay while the gate was closed",
        during == 0,
        f"{during} request(s) in the {window:.2f} s window after the closure was seen",
    )
    phase.check(
        "429: short deadlines refused at once with rate_limited",
        hurried.errors["rate_limited"] == plan.crowd_short_calls,
        f"{hurried.errors['rate_limited']} of {plan.crowd_short_calls} refused",
    )
    phase.check(
        "429: the others waited and then succeeded",
        waiting.ok == plan.crowd_pushes and dashboard.ok == 2,
        f"{waiting.ok} of {plan.crowd_pushes} pushes and {dashboard.ok} of 2 dashboard calls ok",
    )
    phase.check(
        "429: no 429 reached the app",
        app_429 == 0,
        f"the app saw {app_429} answer(s) with status 429",
    )


async def outage(ctx: DemoContext, phase: Phase) -> None:
    """Clay's public API goes down while callers keep calling; the breaker opens, then heals."""
    plan, sim = ctx.plan, ctx.sim
    stage = ["before the outage"]
    stop = trio.Event()
    marks: dict[str, SimCounters] = {}
    wall_start = time.time()
    states_from = max(0, len(ctx.watch.breaker_states) - 1)

    def live() -> dict[str, str]:
        return {"stage": stage[0]}

    phase.live_fn = live

    async def caller() -> None:
        while not stop.is_set():
            tally = phase.stage(stage[0])
            await tally.run(ctx.me(deadline_ms=plan.caller_deadline_ms))
            await trio.sleep(plan.caller_pause)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(plan.callers):
                nursery.start_soon(caller)
            await trio.sleep(plan.healthy_lead)
            marks["outage"] = await sim.counters()
            stage[0] = "during the outage"
            await sim.set_faults(outage="unavailable", path_prefix=PUBLIC_PATHS)
            with stuck_after(WAIT_SLACK, "the breaker to open"):
                await ctx.watch.wait_for(lambda w: w.breaker_state() == "open")
            # Clay stays down past the reset timeout: a half-open probe fails and the
            # breaker opens again, while the callers keep failing fast.
            probe = "a half-open probe to fail and reopen the breaker"
            with stuck_after(plan.reset_timeout + WAIT_SLACK, probe):
                await ctx.watch.wait_for(lambda w: _opened(ctx, wall_start) >= 2)
            await sim.clear_faults()
            marks["healed"] = await sim.counters()
            stage[0] = "after healing"
            healed = "the breaker to close again after healing"
            with stuck_after(plan.reset_timeout + WAIT_SLACK, healed):
                await ctx.watch.wait_for(lambda w: w.breaker_state() == "closed")
            await trio.sleep(RECOVERY_TAIL)
            stop.set()
    finally:
        with trio.CancelScope(shield=True):
            await sim.clear_faults()
    during = marks["healed"].minus(marks["outage"])
    app_during = phase.stages["during the outage"]
    transitions = [
        {"event": e.get("event"), "previous": e.get("previous"), "reason": e.get("reason")}
        for e in ctx.breaker_events(wall_start)
    ]
    opened = sum(1 for t in transitions if t["event"] == "breaker.opened")
    half_open = sum(1 for t in transitions if t["event"] == "breaker.half_open")
    closed = sum(1 for t in transitions if t["event"] == "breaker.closed")
    phase.facts.update(
        app_calls_during_outage=app_during.calls,
        refused_breaker_open=app_during.errors["breaker_open"],
        failed_upstream_error=app_during.errors["upstream_error"],
        clay_requests_during_outage=during.requests,
        clay_503=during.answered(503),
        breaker_transitions=transitions,
        breaker_states_polled=ctx.watch.breaker_states[states_from:],
        breaker_state_at_end=ctx.watch.breaker_state(),
    )
    phase.check(
        "outage: the breaker opened",
        opened >= 1,
        f"breaker.opened logged {opened} time(s)",
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
        half_open >= 1 and closed >= 1 and ctx.watch.breaker_state() == "closed",
        f"half_open {half_open}x, closed {closed}x; state now {ctx.watch.breaker_state()}",
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


def _opened(ctx: DemoContext, after: float) -> int:
    return sum(1 for e in ctx.breaker_events(after) if e.get("event") == "breaker.opened")


PhaseFn = Callable[[DemoContext, Phase], Awaitable[None]]

PHASES: Final[tuple[tuple[str, str, str, PhaseFn], ...]] = (
    (
        "pacing",
        "1. Pacing",
        "The app pushes rows into a Clay table webhook as fast as it can. Clay takes 10 rows/s "
        "with a burst of 20 per workspace; the daemon's gate paces every push to that limit.",
        pacing,
    ),
    (
        "rate_limit",
        "2. A 429",
        "Another tool ate the workspace's API budget: Clay answers 429 with Retry-After. The "
        "daemon closes its gate for every local caller until then; nobody hammers Clay.",
        rate_limit,
    ),
    (
        "outage",
        "3. Outage",
        "Clay's public API goes down while the app keeps calling. The breaker opens; calls fail "
        "fast; a half-open probe checks on Clay; once it heals, the breaker closes.",
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
