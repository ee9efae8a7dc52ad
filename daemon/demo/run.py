"""Running ``kiln demo``: the simulator, the daemon process, the phases, the summary.

``run_demo`` starts the Clay simulator as its own process (127.0.0.1, an ephemeral port) and a
real daemon process pointed at it, both on temporary paths, runs the four phases within the
time budget, stops both, and returns the summary as a JSON-able map. Both processes are
stopped (SIGTERM, then SIGKILL) and the temporary directory removed (unless ``keep``) on every
way out: success, an error, a cancellation, Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import trio

from claykiln.daemon.client._errors import KilnError
from claykiln.daemon.demo.context import BULK_TABLE, TABLE, DemoContext
from claykiln.daemon.demo.daemon import (
    DEMO_API_KEY,
    DEMO_WEBHOOK_TOKEN,
    DemoDaemon,
    demo_config,
    event_time,
    operation_breaker,
)
from claykiln.daemon.demo.model import DemoError, DemoPlan, Phase
from claykiln.daemon.demo.phases import PHASES, PhaseFn
from claykiln.daemon.demo.render import DemoView
from claykiln.daemon.demo.sim import DemoSimulator
from claykiln.daemon.demo.watch import PUBLIC_GATE, WEBHOOK_GATE, PhaseStuck, Watch

__all__ = ["SHORT_TMP", "run_demo"]

SHORT_TMP: Final = Path("/tmp")
"""Preferred parent of the temp dir: AF_UNIX socket paths must stay under 108 bytes."""
STOP_RESERVE: Final = 3.0
"""Seconds of the budget kept for stopping the daemon after the last phase."""
CLIENT_TIMEOUT: Final = 30.0
TIMELINE_EVENTS: Final = (
    "breaker.opened",
    "breaker.half_open",
    "breaker.closed",
    "gate.closed",
    "gate.opened",
)


def _temp_root() -> Path:
    parent = SHORT_TMP if SHORT_TMP.is_dir() and os.access(SHORT_TMP, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="kiln-demo-", dir=parent))


async def run_demo(plan: DemoPlan, view: DemoView, *, keep: bool = False) -> dict[str, Any]:
    """Run every phase within ``plan.budget`` seconds and return the summary map.

    Raises ``DemoError`` when the simulator or the daemon cannot start or stops answering. Both
    processes are always stopped and reaped before this returns or raises.
    """
    from claykiln.daemon.client._trio import TrioClient

    t0, wall0 = trio.current_time(), time.time()
    root = _temp_root()
    sim = DemoSimulator(root, api_key=DEMO_API_KEY, rate=plan.rate, burst=plan.clay_burst)
    daemon: DemoDaemon | None = None
    try:
        await sim.start({TABLE: DEMO_WEBHOOK_TOKEN, BULK_TABLE: DEMO_WEBHOOK_TOKEN})
        config = demo_config(plan, sim.url)
        daemon = DemoDaemon(root, config)
        await daemon.start()
        phases: list[Phase] = []
        try:
            async with (
                TrioClient(daemon.socket, timeout=CLIENT_TIMEOUT) as app,
                TrioClient(daemon.socket, timeout=CLIENT_TIMEOUT) as observer,
            ):
                server = (await observer.hello()).get("server", "claykiln")
                warmup = await _warm_up(app)
                watch = Watch(observer, sim, t0)
                view.attach(watch)
                watch.on_tick = view.refresh
                breakers = (operation_breaker(config, "me"), operation_breaker(config, "push_row"))
                view.intro(_intro(plan, sim, daemon, server, root, keep, warmup, breakers))
                ctx = DemoContext(plan, sim, daemon, app, watch, t0, *breakers)
                async with trio.open_nursery() as nursery:
                    await nursery.start(watch.run)
                    await _run_phases(ctx, view, phases, t0 + plan.budget - STOP_RESERVE)
                    nursery.cancel_scope.cancel()
        finally:
            view.close()
            exit_code = await daemon.stop()
        totals = (await sim.counters()).to_json()
        kept = root if keep else None
        summary = _summary(plan, phases, daemon, watch, exit_code, totals, server, t0, wall0, kept)
        summary["warmup"] = warmup
        summary["simulator"] = {"pid": sim.pid, "url": sim.url}
        summary["temp_dir"] = str(root)
        return summary
    finally:
        if daemon is not None:
            await daemon.kill()
        await sim.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


async def _warm_up(app: Any) -> dict[str, Any]:
    """The app checks its API key through the daemon before anything else (``me``).

    Besides being what an app does first, it takes the daemon's cold start (the first request's
    imports and connection) out of the pacing phase: a cold first request of a burst arrives
    late and makes the paced ones after it look early to Clay's bucket.
    """
    try:
        result = await app.call("me")
    except KilnError as exc:
        msg = f"the first call through the daemon failed: {exc}"
        raise DemoError(msg) from exc
    body = result.get("body")
    workspace = body.get("workspace", {}).get("name") if isinstance(body, dict) else None
    return {"status": result.get("status"), "workspace": workspace}


async def _run_phases(
    ctx: DemoContext, view: DemoView, phases: list[Phase], deadline: float
) -> None:
    bounds = ctx.plan.phase_bounds()
    for name, title, story, fn in PHASES:
        phase = Phase(name, title, story)
        phases.append(phase)
        if trio.current_time() >= deadline:
            phase.note = "skipped: the time budget was used up by the earlier phases"
            phase.check(f"{name}: phase ran to the end", False, phase.note)
            continue
        await _run_phase(ctx, view, phase, fn, min(deadline, trio.current_time() + bounds[name]))


async def _run_phase(
    ctx: DemoContext, view: DemoView, phase: Phase, fn: PhaseFn, deadline: float
) -> None:
    """Run one phase until done or ``deadline``; whatever it counted is kept either way."""
    phase.before = await ctx.sim.counters()
    phase.started = trio.current_time()
    view.begin(phase)
    with trio.move_on_at(deadline) as scope:
        try:
            await fn(ctx, phase)
            phase.complete = True
        except* PhaseStuck as group:
            phase.note = "; ".join(str(e) for e in _leaves(group))
    if scope.cancelled_caught:
        phase.note = (
            f"cut short by its time bound after {trio.current_time() - phase.started:.1f} s"
        )
    with trio.CancelScope(shield=True):
        await ctx.sim.clear_faults()
        phase.clay = (await ctx.sim.counters()).minus(phase.before)
        await ctx.watch.poll(clay=True)  # the panel's last frame: the state at the phase's end
    phase.elapsed = trio.current_time() - phase.started
    phase.check(
        f"{phase.name}: phase ran to the end",
        phase.complete,
        phase.note or f"in {phase.elapsed:.1f} s",
    )
    view.end(phase)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _intro(
    plan: DemoPlan,
    sim: DemoSimulator,
    daemon: DemoDaemon,
    server: str,
    root: Path,
    keep: bool,
    warmup: dict[str, Any],
    breakers: tuple[str, str],
) -> list[str]:
    public, webhook = breakers
    if public == webhook:
        breaker_line = f"breaker {public} (the Public API and table webhooks)"
    else:
        breaker_line = f"breakers {public} (the Public API) and {webhook} (table webhooks)"
    return [
        f"Clay simulator on {sim.url} (pid {sim.pid}; no Clay account, loopback only)",
        f"{server} daemon, pid {daemon.pid}, socket {daemon.socket}",
        f"config {daemon.config_path} (the default operations; upstream clay -> the simulator)",
        f"Clay's webhook limit {plan.rate:g}/s burst {plan.clay_burst}; the daemon's webhook "
        f"gate {WEBHOOK_GATE} {plan.rate:g}/s burst {plan.gate_burst}, spending at most "
        f"{plan.gate_tokens_at_once:g} tokens at once ({plan.gate_margin * 1000:g} ms of tokens "
        f"kept in hand for network jitter); the Public API's gate {PUBLIC_GATE}: no pacing, "
        f"Retry-After only",
        f"{breaker_line}, reset {plan.reset_timeout:g} s; "
        f"bulk lane {plan.bulk_concurrency} + {plan.bulk_queue} queued"
        + ("; the quick plan (a faster clock, for tests)" if plan.profile == "quick" else ""),
        f"budget {plan.budget:g} s; temp dir {root}"
        + (" (kept)" if keep else " (removed at the end)"),
        f"first call (me): {warmup['status']}, workspace {warmup['workspace']!r}",
    ]


def _timeline(daemon: DemoDaemon, wall0: float) -> list[dict[str, Any]]:
    out = []
    for event in daemon.events(TIMELINE_EVENTS):
        stamp = event_time(event)
        name = str(event.get("event"))
        if name.startswith("breaker."):
            detail = f"{event.get('key')}: {event.get('previous')} -> {name.split('.')[1]}"
            detail += f" ({event.get('reason')})"
        elif name == "gate.closed":
            retry_after, reason = event.get("retry_after"), event.get("reason")
            detail = f"gate {event.get('gate')}: Retry-After {retry_after} s ({reason})"
        else:
            detail = f"gate {event.get('gate')}: open again"
        out.append(
            {
                "t_s": round((stamp or wall0) - wall0, 3),
                "event": name,
                "detail": detail,
                "fields": {k: v for k, v in event.items() if k not in ("timestamp", "logger")},
            }
        )
    return out


def _summary(
    plan: DemoPlan,
    phases: list[Phase],
    daemon: DemoDaemon,
    watch: Watch,
    exit_code: int | None,
    totals: dict[str, Any],
    server: str,
    t0: float,
    wall0: float,
    kept: Path | None,
) -> dict[str, Any]:
    checks = [check.to_json() for phase in phases for check in phase.checks]
    checks.append(
        _check("daemon: stopped cleanly on SIGTERM", exit_code == 0, f"exit status {exit_code}")
    )
    timeline = _timeline(daemon, wall0)
    return {
        "ok": all(c["ok"] for c in checks),
        "budget_s": plan.budget,
        "elapsed_s": round(trio.current_time() - t0, 3),
        "daemon": {"server": server, "pid": daemon.pid, "exit_code": exit_code},
        "plan": {
            "profile": plan.profile,
            "rows": plan.rows,
            "rate": plan.rate,
            "clay_burst": plan.clay_burst,
            "gate_burst": plan.gate_burst,
            "gate_margin_s": plan.gate_margin,
            "gate_tokens_at_once": plan.gate_tokens_at_once,
            "reset_timeout_s": plan.reset_timeout,
            "retry_after_s": plan.closure,
            "bulk_lane": {"concurrency": plan.bulk_concurrency, "queue": plan.bulk_queue},
        },
        "phases": {phase.name: phase.to_json() for phase in phases},
        "timeline": timeline,
        "breaker_transitions": [t for t in timeline if t["event"].startswith("breaker.")],
        "gate_closures": [t for t in timeline if t["event"] == "gate.closed"],
        "gate_sightings": [s.to_json() for s in watch.gate_sightings],
        "clay_totals": totals,
        "checks": checks,
        "kept": None if kept is None else str(kept),
    }


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}
