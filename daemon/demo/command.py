"""``kiln demo``: the daemon at work against a local Clay simulator, in under a minute.

Needs no Clay account, no config and no network beyond loopback. It starts the Clay simulator
and a real daemon as two processes on temporary paths, drives realistic traffic through the
client library in four phases (pacing, a 429, an outage, a flooded lane), and ends with a
summary whose every figure was counted during the run. Both processes are always stopped and
the temporary directory removed (``--keep`` keeps it for inspection).

Exit status: 0 when every check passed; 1 when a check failed or the demo could not run;
130 on Ctrl-C (SIGINT), at any moment: once trio runs, the signal is received by a task and
cancels the run, so it is never lost (a KeyboardInterrupt raised inside a finalizer would be);
before that, the KeyboardInterrupt itself. Wiring: the ``demo`` entry of ``COMMANDS`` in
daemon/cli/__init__.py calls ``demo_command()``. Heavy imports (trio, the simulator, rich)
happen only when the command runs.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from typing import Any, Final

import click

__all__ = ["DEFAULT_BUDGET", "demo_command", "main_json"]

DEFAULT_BUDGET: Final = 45.0
EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` inside ``exc`` (trio wraps errors from nurseries in groups)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _interrupted() -> int:
    click.echo("kiln demo: interrupted; the daemon and the simulator were stopped", err=True)
    return EXIT_INTERRUPTED


async def _until_interrupted(plan: Any, view: Any, keep: bool) -> dict[str, Any] | None:
    """``run_demo``, cancelled by the first SIGINT: its summary, or None when interrupted (the
    demo's own cleanup, shielded, has stopped both processes by then)."""
    from claykiln.daemon.demo.run import run_demo
    from claykiln.daemon.interrupt import until_sigint

    summary, interrupted = await until_sigint(partial(run_demo, keep=keep), plan, view)
    return None if interrupted else summary


def run(duration: float, *, as_json: bool = False, keep: bool = False, quick: bool = False) -> int:
    """Run the demo in a fresh trio run; print the summary; return the exit status.

    ``quick`` runs ``DemoPlan.quick`` (the same phases and checks on a faster clock, for tests)
    instead of the tour that ``kiln demo`` shows."""
    try:
        return _run(duration, as_json=as_json, keep=keep, quick=quick)
    except KeyboardInterrupt:  # before trio runs (the imports, the plan)
        return _interrupted()


def _run(duration: float, *, as_json: bool, keep: bool, quick: bool) -> int:
    import trio

    from claykiln.daemon.demo.model import DemoError, DemoPlan
    from claykiln.daemon.demo.render import DemoView, QuietView, RichView

    plan = DemoPlan.quick(duration) if quick else DemoPlan.from_budget(duration)
    view: DemoView = QuietView() if as_json else RichView()
    try:
        summary = trio.run(_until_interrupted, plan, view, keep)
    except BaseException as exc:
        if _find(exc, KeyboardInterrupt) is not None:
            return _interrupted()
        found = _find(exc, DemoError)
        if found is None:
            raise
        click.echo(f"kiln demo: {found}", err=True)
        return EXIT_FAILED
    if summary is None:
        return _interrupted()
    if as_json:
        main_json(summary)
    else:
        view.summary(summary)
        if summary.get("kept"):
            click.echo(f"kept the demo's files in {summary['kept']}")
    return 0 if summary.get("ok") else EXIT_FAILED


def main_json(summary: dict[str, Any]) -> None:
    """Print the summary as JSON on stdout."""
    click.echo(json.dumps(summary, indent=2, sort_keys=False, default=str))


def demo_command() -> click.Command:
    """The ``demo`` click command (options --duration, --json, --keep; --quick is hidden)."""
    from claykiln.daemon.demo.model import MAX_BUDGET, MIN_BUDGET

    @click.command("demo")
    @click.option(
        "--duration",
        type=click.FloatRange(MIN_BUDGET, MAX_BUDGET),
        default=DEFAULT_BUDGET,
        show_default=True,
        help=f"Time budget in seconds ({MIN_BUDGET:g}-{MAX_BUDGET:g}); the demo ends within it.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
    @click.option("--keep", is_flag=True, help="Keep the temp dir (config, log, state).")
    @click.option(
        "--quick",
        is_flag=True,
        hidden=True,
        help="The same phases and checks on a faster clock (1 s Retry-After and breaker reset).",
    )
    def demo(duration: float, as_json: bool, keep: bool, quick: bool) -> None:
        """Watch the daemon pace, back off, break and shed load against a local Clay simulator."""
        sys.exit(run(duration, as_json=as_json, keep=keep, quick=quick))

    return demo
