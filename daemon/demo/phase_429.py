"""Phase 2 of ``kiln demo``: a 429 from Clay's Public API closes only the Public API's gate.

The app starts a routine run, then another tool eats the workspace's Public API budget (the
simulator's public bucket shrinks to one token per ``closure`` seconds): the dashboard's second
``me`` gets Clay's 429 with Retry-After, which closes the gate ``clay-public``. While it is
closed the phase counts, from the run: dashboard calls held by the gate, routine polls with a
short deadline refused at once with ``rate_limited`` (naming the gate), Public API requests that
reached Clay (none), and webhook pushes, paced by their own gate ``clay``, that went on reaching
Clay and being stored. The simulator's settings are restored on the way out, whatever happened.

Two figures describe the closure and are never mixed up: its length (the Retry-After, read from
the daemon's ``gate.closed`` log event) and what was left of it when the demo first saw it
closed (the status's ``closed_for``, counting down).
"""

from __future__ import annotations

import time
from typing import Any, Final

import trio

from claykiln.daemon.client._errors import KilnError
from claykiln.daemon.demo.context import ROUTINE, TABLE, DemoContext
from claykiln.daemon.demo.daemon import event_time
from claykiln.daemon.demo.model import Phase, Tally
from claykiln.daemon.demo.sim import DemoSimulator
from claykiln.daemon.demo.watch import (
    PUBLIC_GATE,
    WAIT_SLACK,
    WEBHOOK_GATE,
    PhaseStuck,
    stuck_after,
)

__all__ = ["CLOSURE_MARGIN", "FLOW_ROWS", "rate_limit"]

CLOSURE_MARGIN: Final = 0.25
"""Seconds cut from the end of an observed gate closure when counting what reached Clay during
it (the status reply is a few ms old when read; the window must end before the reopening)."""
FLOW_ROWS: Final = 1000
"""Number of the first row pushed while the Public API's gate is closed."""


async def rate_limit(ctx: DemoContext, phase: Phase) -> None:
    """Clay answers a Public API call 429 with Retry-After: the Public API's gate closes for
    every Public API caller meanwhile, while webhook pushes keep flowing through their own gate."""
    plan, sim, watch = ctx.plan, ctx.sim, ctx.watch
    wall_start = time.time()
    original = await sim.settings()
    sightings_from = len(watch.gate_sightings)
    stored_before = await sim.row_count(TABLE)
    run_id = await _start_run(ctx, phase.stage("routine start (start_routine)"))
    # Another tool on the workspace has eaten the Public API budget: one token, then one per
    # `closure` seconds, so Clay's 429 says Retry-After: closure.
    await sim.update_settings(public_rate=1.0 / plan.closure, public_burst=1)
    dashboard = phase.stage("dashboard (me)")
    waiting = phase.stage("dashboard widgets that wait (me)")
    hurried = phase.stage(f"routine polls with a {plan.short_deadline_ms} ms deadline")
    pushes = phase.stage(f"webhook pushes meanwhile (gate {WEBHOOK_GATE})")
    retried: list[dict[str, Any]] = []
    refusals: list[KilnError] = []

    async def refresh_dashboard() -> None:
        for _ in range(2):
            result = await dashboard.run(ctx.me())
            if isinstance(result, dict):
                retried.append(result)

    async def poll_in_a_hurry() -> None:
        deadline_ms = plan.short_deadline_ms
        result = await hurried.run(ctx.poll_routine(ROUTINE, run_id, deadline_ms=deadline_ms))
        if isinstance(result, KilnError):
            refusals.append(result)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh_dashboard)
            closing = "the Public API's gate to close after Clay's 429"
            with stuck_after(plan.closure + WAIT_SLACK, closing):
                await watch.wait_for(lambda w: bool(w.gate(PUBLIC_GATE).get("closed")))
            seen_at = trio.current_time()
            reopens_in = float(watch.gate(PUBLIC_GATE).get("closed_for", 0.0))
            window = max(0.0, reopens_in - CLOSURE_MARGIN)
            # The other tool is done: Clay has budget again. The daemon still honors the
            # Retry-After it was given, so no Public API call goes out until it has passed (and
            # the callers it held do not meet a second 429 when it reopens).
            await _restore_public_budget(sim, original)
            before = await sim.counters()
            for _ in range(plan.crowd_waiting):
                nursery.start_soon(waiting.run, ctx.me())
            for _ in range(plan.crowd_short_calls):
                nursery.start_soon(poll_in_a_hurry)
            end = seen_at + window
            nursery.start_soon(ctx.push_while, pushes, FLOW_ROWS, lambda: trio.current_time() < end)
            await trio.sleep_until(seen_at + window)
            during = (await sim.counters()).minus(before)
            await watch.poll()
            still_waiting = waiting.calls - waiting.answered
            critical_active = int(watch.lane("critical").get("active", 0))
            webhook_gate = watch.gate(WEBHOOK_GATE)
    finally:
        with trio.CancelScope(shield=True):
            await _restore_public_budget(sim, original)
    clay = await ctx.since(phase)
    stored = await sim.row_count(TABLE) - stored_before
    sighting = next(
        (s for s in reversed(watch.gate_sightings[sightings_from:]) if s.gate == PUBLIC_GATE), None
    )
    webhook_closures = sum(
        1 for s in watch.gate_sightings[sightings_from:] if s.gate != PUBLIC_GATE
    )
    app_429 = sum(t.statuses[429] for t in phase.stages.values())
    public_during = during.received.get("public", 0)
    webhook_during = during.received.get("webhook", 0)
    refused_gates = sorted({str(e.details.get("gate")) for e in refusals})
    push_max_ms = round(max(pushes.durations_ms, default=0.0), 1)
    waited_s = round(min(waiting.durations_ms, default=0.0) / 1000, 2)
    retry_after = _closure_length(ctx, wall_start)
    phase.facts.update(
        gate=PUBLIC_GATE,
        retry_after_s=retry_after,
        gate_reopens_in_s_at_first_sight=round(reopens_in, 3),
        gate_sighting=None if sighting is None else sighting.to_json(),
        closure_window_s=round(window, 3),
        public_requests_during_closure=public_during,
        public_calls_waiting_at_window_end=still_waiting,
        critical_lane_active_at_window_end=critical_active,
        waiting_calls_ok=waiting.ok,
        waiting_calls_min_s=waited_s,
        rate_limited=hurried.errors["rate_limited"],
        rate_limited_gates=refused_gates,
        webhook_gate=WEBHOOK_GATE,
        webhook_gate_at_window_end={k: webhook_gate.get(k) for k in ("closed", "tokens")},
        webhook_gate_closures_seen=webhook_closures,
        webhook_requests_during_closure=webhook_during,
        pushes_during_closure=pushes.to_json(),
        rows_stored_by_clay=stored,
        push_max_ms=push_max_ms,
        clay_429=clay.answered(429),
        app_429=app_429,
        retried_call_attempts=max((r.get("attempts", 1) for r in retried), default=0),
    )
    phase.check(
        "429: Clay's Retry-After closed the Public API's gate",
        retry_after is not None
        and 0 < reopens_in <= retry_after
        and clay.answered(429, "public") >= 1,
        f"Clay answered 429 {clay.answered(429, 'public')} time(s) on the Public API; its "
        f"Retry-After closed gate {PUBLIC_GATE} for {_seconds(retry_after)}, of which "
        f"{reopens_in:.2f} s were left when the demo first saw it closed",
    )
    phase.check(
        "429: no Public API call reached Clay while its gate was closed",
        public_during == 0 and still_waiting == plan.crowd_waiting,
        f"{public_during} Public API request(s) in the {window:.2f} s window after the closure "
        f"was seen; {still_waiting} of {plan.crowd_waiting} waiting calls still held at its end",
    )
    phase.check(
        "429: short deadlines refused at once with rate_limited",
        hurried.errors["rate_limited"] == plan.crowd_short_calls and refused_gates == [PUBLIC_GATE],
        f"{hurried.errors['rate_limited']} of {plan.crowd_short_calls} routine polls refused, "
        f"naming gate(s) {', '.join(refused_gates) or '-'}",
    )
    phase.check(
        "429: the others waited and then succeeded",
        waiting.ok == plan.crowd_waiting and dashboard.ok == 2,
        f"{waiting.ok} of {plan.crowd_waiting} waiting calls and {dashboard.ok} of 2 dashboard "
        f"calls ok",
    )
    phase.check(
        "429: webhook pushes kept flowing on their own gate",
        webhook_during > 0 and pushes.ok == pushes.calls == stored and webhook_closures == 0,
        f"{webhook_during} push(es) reached Clay during the closure; {pushes.ok} of "
        f"{pushes.calls} answered 2xx (the slowest in {push_max_ms} ms), {stored} rows stored; "
        f"gate {WEBHOOK_GATE} seen closed {webhook_closures} time(s)",
    )
    phase.check(
        "429: no 429 reached the app",
        app_429 == 0,
        f"the app saw {app_429} answer(s) with status 429",
    )


def _closure_length(ctx: DemoContext, after: float) -> float | None:
    """The Retry-After (seconds) of the first closure of the Public API's gate logged at or
    after wall time ``after`` (the daemon's ``gate.closed`` event); None if none was logged."""
    for event in ctx.daemon.events(("gate.closed",)):
        if event.get("gate") == PUBLIC_GATE and (event_time(event) or 0.0) >= after:
            seconds = event.get("retry_after")
            return float(seconds) if isinstance(seconds, int | float) else None
    return None


def _seconds(value: float | None) -> str:
    return "an unknown time (no gate.closed logged)" if value is None else f"{value:g} s"


async def _start_run(ctx: DemoContext, tally: Tally) -> str:
    """Start the routine run the hurried pollers poll; its run id (``PhaseStuck`` if none)."""
    result = await tally.run(ctx.start_routine(ROUTINE))
    body = result.get("body") if isinstance(result, dict) else None
    run_id = body.get("run_id") if isinstance(body, dict) else None
    if not isinstance(run_id, str):
        msg = f"start_routine did not start a run: {result!r}"
        raise PhaseStuck(msg)
    return run_id


async def _restore_public_budget(sim: DemoSimulator, original: dict[str, Any]) -> None:
    await sim.update_settings(
        public_rate=original["public_rate"], public_burst=original["public_burst"]
    )
