"""Phase 3 of ``kiln demo``: Clay's Public API goes down; its breaker opens, probes, heals.

Callers keep calling ``me`` through the outage. The phase tallies their calls by stage: before,
during (refused at once with ``breaker_open`` once the breaker opened), after Clay healed while
the breaker still waits out its open interval (refusals that are a wait, not a failure), and
after it closed. Each opening's length comes from the daemon's log (``breaker.opened``
retry_after: the daemon lengthens each opening in a row). When table webhooks have a breaker of
their own, rows are pushed all through the outage to show they keep flowing.
"""

from __future__ import annotations

import time
from typing import Any, Final

import trio

from claykiln.daemon.demo.context import TABLE, DemoContext
from claykiln.daemon.demo.model import Phase, SimCounters, Tally
from claykiln.daemon.demo.watch import WAIT_SLACK, stuck_after

__all__ = ["AFTER_CLOSE", "BEFORE", "DURING", "HEALED_OPEN", "QUIET", "outage"]

PUBLIC_PATHS: Final = "/public/"
QUIET: Final = "quiet: the breaker's window forgets the earlier calls"
BEFORE: Final = "before the outage"
DURING: Final = "during the outage"
HEALED_OPEN: Final = "healed, breaker waits out its reset timeout"
AFTER_CLOSE: Final = "after the breaker closed"
OUTAGE_ROWS: Final = 3000
"""Number of the first row pushed during the Public API's outage."""
HEAL_SLACK: Final = 1.0
"""Seconds a healed breaker may take past its open interval to close (the next caller's probe,
the watch's poll)."""


async def outage(ctx: DemoContext, phase: Phase) -> None:
    """Clay's public API goes down while callers keep calling; the breaker opens, then heals.

    The breaker watched is the Public API's (``ctx.public_breaker``); once Clay heals, the
    callers' calls are tallied apart while it still waits out its reset timeout, and again once
    it closed, so a refusal after healing is shown as the wait it is. When table webhooks have a
    breaker of their own (``ctx.webhook_breaker``), rows are pushed all through the outage to
    show they keep flowing."""
    plan, sim, watch = ctx.plan, ctx.sim, ctx.watch
    key, webhook = ctx.public_breaker, ctx.webhook_breaker
    pushes: Tally | None = None
    webhook_states_from = max(0, len(watch.breaker_states.get(webhook, [])) - 1)
    stage = [QUIET]
    stop = trio.Event()
    marks: dict[str, SimCounters] = {}
    times: dict[str, float] = {}

    def live() -> dict[str, str]:
        if webhook == key:
            return {"stage": stage[0], "breakers": f"{key}: the Public API and table webhooks"}
        return {
            "stage": stage[0],
            "breakers": f"{key}: the Public API · {webhook}: table webhooks, a breaker of their "
            f"own, so rows keep flowing",
        }

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

    stored_before = await sim.row_count(TABLE)
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(plan.callers):
                nursery.start_soon(caller)
            await trio.sleep(plan.healthy_lead)
            stage[0] = DURING
            await sim.set_faults(outage="unavailable", path_prefix=PUBLIC_PATHS)
            # Counted from here: a call that reached Clay between the two control requests
            # would be a 200 counted as received during the outage.
            marks["outage"] = await sim.counters()
            if webhook != key:
                pushes = phase.stage(f"webhook pushes meanwhile (breaker {webhook})")
                nursery.start_soon(ctx.push_while, pushes, OUTAGE_ROWS, lambda: stage[0] == DURING)
            with stuck_after(WAIT_SLACK, f"the Public API's breaker {key} to open"):
                await watch.wait_for(lambda w: w.breaker_state(key) == "open")
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
    _outage_facts(ctx, phase, marks, times, wall_start)
    if pushes is not None:
        stored = await sim.row_count(TABLE) - stored_before
        states = watch.breaker_states.get(webhook, [])[webhook_states_from:] or ["closed"]
        phase.facts.update(
            webhook_pushes_during_outage=pushes.to_json(),
            rows_stored_during_outage=stored,
            webhook_breaker_states=states,
        )
        phase.check(
            "outage: webhook pushes kept flowing on their own breaker",
            pushes.calls > 0 and pushes.ok == pushes.calls == stored and "open" not in states,
            f"{pushes.ok} of {pushes.calls} pushes answered 2xx while the Public API was down, "
            f"{stored} rows stored; breaker {webhook}: {' -> '.join(states)}",
        )


def _outage_facts(
    ctx: DemoContext,
    phase: Phase,
    marks: dict[str, SimCounters],
    times: dict[str, float],
    wall_start: float,
) -> None:
    plan, watch, key = ctx.plan, ctx.watch, ctx.public_breaker
    during = marks["healed"].minus(marks["outage"])
    public = during.received.get("public", 0)  # the webhook's pushes may flow meanwhile
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
        webhook_breaker=ctx.webhook_breaker,
        app_calls_during_outage=app_during.calls,
        refused_breaker_open=app_during.errors["breaker_open"],
        failed_upstream_error=app_during.errors["upstream_error"],
        clay_requests_during_outage=public,
        clay_503=during.answered(503, "public"),
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
        public * 3 <= app_during.calls,
        f"{public} Public API request(s) reached Clay for {app_during.calls} calls by the app",
    )
    phase.check(
        "outage: half-open probe, then closed",
        half_open >= 1 and closed >= 1 and state == "closed",
        f"half_open {half_open}x, closed {closed}x; state now {state}",
    )
    phase.check(
        "outage: after healing, refused only until the next probe",
        reset_wait <= reopened_for + HEAL_SLACK and after.ok == after.calls > 0,
        f"Clay healed while the breaker was open for {reopened_for:.2f} s after a failed probe; "
        f"it refused {waiting.errors['breaker_open']} call(s) for {reset_wait:.2f} s more, then "
        f"its next probe succeeded: {after.ok} of {after.calls} calls ok since",
    )


def _transition(event: dict[str, Any]) -> dict[str, Any]:
    """A breaker transition from the daemon's log; an opening carries how long it lasts."""
    out = {k: event.get(k) for k in ("event", "previous", "reason")}
    if event.get("event") == "breaker.opened":
        out["open_for_s"] = event.get("retry_after")
    return out


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
