"""What ``kiln demo`` shows on a terminal: a live panel per phase and the final summary.

``RichView`` renders from the live objects while the demo runs (the phase's tallies, the
simulator's counters, the daemon's last status) and the final summary from the same JSON map
``--json`` prints (its sentences from ``story``), so both outputs carry the same figures.
``QuietView`` renders nothing.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from claykiln.daemon.demo.model import Phase, SimCounters, Tally
from claykiln.daemon.demo.story import explain, highlight
from claykiln.daemon.demo.watch import BREAKER_KEY, PUBLIC_GATE, WEBHOOK_GATE, Watch

__all__ = ["DemoView", "QuietView", "RichView", "breaker_text", "gate_text"]

REFRESH_INTERVAL = 0.25
"""Seconds between two renders of the live panel (the watch polls more often)."""
GATE_ROWS = ((WEBHOOK_GATE, "webhooks"), (PUBLIC_GATE, "Public API"))
"""The gates the live panel shows, with what each one holds."""
STATE_STYLE = {"closed": "green", "half_open": "yellow", "open": "red", "forced_open": "red"}


class DemoView(Protocol):
    """Where the demo reports progress; every method must be cheap and must not raise."""

    def attach(self, watch: Watch) -> None: ...
    def intro(self, lines: list[str]) -> None: ...
    def begin(self, phase: Phase) -> None: ...
    def refresh(self) -> None: ...
    def end(self, phase: Phase) -> None: ...
    def summary(self, summary: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class QuietView:
    """Renders nothing (``--json``: only the summary is printed, by the caller)."""

    def attach(self, watch: Watch) -> None:
        pass

    def intro(self, lines: list[str]) -> None:
        pass

    def begin(self, phase: Phase) -> None:
        pass

    def refresh(self) -> None:
        pass

    def end(self, phase: Phase) -> None:
        pass

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _tally_line(tally: Tally) -> str:
    parts = [f"{tally.calls} calls", f"[green]{tally.ok} ok[/]"]
    parts += [
        f"[yellow]{n}x {status}[/]"
        for status, n in sorted(tally.statuses.items())
        if not 200 <= status < 300
    ]
    parts += [f"[red]{n}x {code}[/]" for code, n in sorted(tally.errors.items())]
    return " · ".join(parts)


def _clay_line(counters: SimCounters) -> str:
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counters.received.items()))
    line = f"{counters.requests} requests" + (f" ({kinds})" if kinds else "")
    for status in (429, 503):
        if counters.answered(status):
            line += f" · [yellow]{counters.answered(status)}x {status}[/]"
    return line


class RichView:
    """Live panels on a rich ``Console`` (on a pipe rich prints each panel's last frame)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._watch: Watch | None = None
        self._live: Live | None = None
        self._phase: Phase | None = None
        self._rendered_at = 0.0

    def attach(self, watch: Watch) -> None:
        self._watch = watch

    def intro(self, lines: list[str]) -> None:
        self.console.print(Panel("\n".join(lines), title="kiln demo", border_style="cyan"))

    def begin(self, phase: Phase) -> None:
        self.close()
        self._phase = phase
        self.console.rule(f"[bold]{phase.title}")
        self.console.print(Text(phase.story, style="dim"))
        self._live = Live(self._panel(), console=self.console, auto_refresh=False)
        self._live.start()

    def refresh(self) -> None:
        now = time.monotonic()
        if self._live is not None and now - self._rendered_at >= REFRESH_INTERVAL:
            self._rendered_at = now
            self._live.update(self._panel(), refresh=True)

    def end(self, phase: Phase) -> None:
        if self._live is not None:
            self._live.update(self._panel(), refresh=True)
        self.close()
        for check in phase.checks:
            mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
            self.console.print(f"  {mark} {check.name}: {check.detail}")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            if not self.console.is_terminal:
                self.console.line()  # off a terminal, rich leaves the last frame unterminated

    def _panel(self) -> Panel:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        phase, watch = self._phase, self._watch
        if phase is not None:
            for name, tally in phase.stages.items():
                grid.add_row(f"app: {name}", _tally_line(tally))
            if phase.clay is not None:  # the phase is over: its exact count
                grid.add_row("Clay saw", _clay_line(phase.clay))
            elif phase.before is not None and watch is not None:
                grid.add_row("Clay saw", _clay_line(watch.clay.minus(phase.before)))
            if phase.live_fn is not None:
                for key, value in phase.live_fn().items():
                    grid.add_row(key, value)
        if watch is not None and watch.status:
            for key in sorted({str(v.get("key")) for v in watch.breakers} or {BREAKER_KEY}):
                grid.add_row(f"breaker {key}", breaker_text(watch.breaker(key)))
            for key, holds in GATE_ROWS:
                grid.add_row(f"gate {key} ({holds})", self._gate(watch, key))
            grid.add_row("lanes", self._lanes(watch))
        return Panel(grid, border_style="blue")

    @staticmethod
    def _gate(watch: Watch, key: str) -> str:
        return gate_text(watch.gate(key))

    @staticmethod
    def _lanes(watch: Watch) -> str:
        parts = []
        for name in ("critical", "bulk"):
            lane = watch.lane(name)
            parts.append(
                f"{name} {lane.get('active', 0)}/{lane.get('concurrency', '?')} busy, "
                f"{lane.get('queued', 0)}/{lane.get('queue', '?')} queued, "
                f"{lane.get('rejected', 0)} refused"
            )
        return " · ".join(parts)

    # -- the final summary ------------------------------------------------------------------

    def summary(self, summary: dict[str, Any]) -> None:
        self.close()
        console = self.console
        console.rule("[bold]Summary")
        console.print(_phase_table(summary))
        console.print(_transitions_table(summary))
        console.print(_checks_table(summary))
        console.print(Panel(Text("\n\n".join(explain(summary))), title="What you just saw"))
        verdict = "[green]all checks passed[/]" if summary.get("ok") else "[red]checks failed[/]"
        console.print(f"{verdict} in {summary.get('elapsed_s', 0):.1f} s")


def breaker_text(view: dict[str, Any]) -> str:
    """One breaker on the live panel: its state, when an open one lets a probe through (the
    reset timeout's end), and its window's error rate."""
    state = str(view.get("state"))
    out = f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"
    retry = view.get("retry_after")
    if isinstance(retry, int | float) and state == "open":
        out += f" (waits out its reset timeout: probe in {retry:.1f} s)"
    rate = view.get("error_rate")
    if isinstance(rate, int | float):
        out += f" · error rate {rate:.0%} of {view.get('calls', 0)} calls"
    return out


def gate_text(gate: dict[str, Any]) -> str:
    """One gate on the live panel. A closed gate shows what is left of its closure ("reopens in"),
    never as "closed for", which would read as the closure's length (the Retry-After)."""
    if not gate:
        return "[green]open[/] · not used yet"
    refused = f"{gate.get('limited', 0)} refused so far"
    if gate.get("closed"):
        # An unpaced gate's callers wait without a reservation: its `waiting` stays 0.
        waiting = f"{gate.get('waiting', 0)} waiting · " if gate.get("paced") else ""
        return (
            f"[red]closed[/] ({gate.get('reason')}), reopens in "
            f"{gate.get('closed_for', 0):.1f} s · {waiting}{refused}"
        )
    if not gate.get("paced"):
        return f"[green]open[/] · no pacing · {refused}"
    tokens = gate.get("tokens")
    shown = f"{tokens:.1f}" if isinstance(tokens, int | float) else "?"
    return f"[green]open[/] · {shown} tokens · {gate.get('waiting', 0)} waiting"


def _codes(app: dict[str, Any]) -> str:
    parts = [f"{n}x {s}" for s, n in app.get("statuses", {}).items() if not s.startswith("2")]
    parts += [f"{n}x {code}" for code, n in app.get("errors", {}).items()]
    return ", ".join(parts) or "-"


def _phase_table(summary: dict[str, Any]) -> Table:
    table = Table("phase", "app calls", "ok", "not ok", "Clay saw", "highlights", title="Phases")
    for name, phase in summary.get("phases", {}).items():
        app, clay = phase.get("app", {}), phase.get("clay") or {}
        title = phase.get("title", name) + ("" if phase.get("complete") else " [red](incomplete)")
        responses = clay.get("responses", {})
        seen = f"{clay.get('requests', 0)}"
        odd = [f"{n}x {s}" for kind in responses.values() for s, n in kind.items() if s[0] != "2"]
        if odd:
            seen += f" ({', '.join(odd)})"
        table.add_row(
            title,
            str(app.get("calls", 0)),
            str(app.get("ok", 0)),
            _codes(app),
            seen,
            highlight(name, phase.get("facts", {})),
        )
    return table


def _transitions_table(summary: dict[str, Any]) -> Table:
    table = Table("t (s)", "what", "detail", title="Breaker and gate, from the daemon's log")
    for item in summary.get("timeline", []):
        table.add_row(f"{item.get('t_s', 0):.2f}", str(item.get("event")), str(item.get("detail")))
    return table


def _checks_table(summary: dict[str, Any]) -> Table:
    table = Table("", "check", "measured", title="Checks")
    for check in summary.get("checks", []):
        table.add_row("[green]✓[/]" if check["ok"] else "[red]✗[/]", check["name"], check["detail"])
    return table
