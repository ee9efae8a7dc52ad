"""What ``kiln top`` draws, as pure functions of what the daemon sent (no I/O, no clock reads).

``TopModel`` keeps the latest tick, short histories for the sparklines and the last alerts;
``screen_lines`` lays it out as rich ``Text`` lines that fit ``width`` x ``height`` (80 x 24 at
least: sections shrink, lists end with ``+N more``); ``plain_snapshot`` and ``plain_tick`` /
``plain_event`` are the same figures as plain lines for a pipe or a log. The tick's keys are
docs/protocol.md's ("tick").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs
from rich.text import Text

__all__ = [
    "BREAKER_STYLES",
    "TopModel",
    "plain_event",
    "plain_snapshot",
    "plain_tick",
    "screen_lines",
    "sparkline",
]

HISTORY: Final = 40  # ticks kept for the sparklines
ALERTS_KEPT: Final = 20
SPARKS: Final = "▁▂▃▄▅▆▇█"
BAR: Final = 10  # characters of a lane's bar
BREAKER_STYLES: Final = {
    "closed": "green",
    "half_open": "bold yellow",
    "open": "bold red",
    "forced_open": "bold reverse red",
    "forced_closed": "cyan",
    "disabled": "dim",
}
HEALTH_STYLES: Final = {"healthy": "bold green", "degraded": "bold yellow", "unhealthy": "bold red"}
SEVERITY_STYLES: Final = {"critical": "bold red", "warning": "yellow", "info": "green"}


def sparkline(values: Iterable[float | None], width: int) -> str:
    """The last ``width`` values as block characters scaled to their maximum (blank: none)."""
    tail = list(values)[-width:]
    known = [v for v in tail if v is not None]
    top = max(known, default=0.0)
    out = []
    for value in tail:
        if value is None:
            out.append(" ")
        elif top <= 0:
            out.append(SPARKS[0])
        else:
            out.append(SPARKS[min(int(value / top * (len(SPARKS) - 1) + 0.5), len(SPARKS) - 1)])
    return "".join(out).rjust(width)


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value >= 100 else f"{value:.1f}ms"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@attrs.define
class TopModel:
    """The view's state: fed ticks and events, read by the layouts."""

    tick: dict[str, Any] | None = None
    tick_at: float = 0.0  # monotonic seconds when the tick arrived (countdowns run from it)
    calls: deque[float] = attrs.Factory(lambda: deque(maxlen=HISTORY))
    rates: dict[str, deque[float]] = attrs.Factory(dict)  # upstream -> requests/s
    p99: dict[str, deque[float | None]] = attrs.Factory(dict)
    alerts: deque[dict[str, Any]] = attrs.Factory(lambda: deque(maxlen=ALERTS_KEPT))
    dropped: int = 0  # what the daemon says this subscription lost
    status: str = ""  # a line about the connection ("reconnecting ...")

    def add_tick(self, tick: Mapping[str, Any], now: float) -> None:
        self.tick = dict(tick)
        self.tick_at = now
        self.dropped = int(tick.get("dropped", self.dropped) or 0)
        self.calls.append(float(tick.get("calls", {}).get("per_s", 0.0)))
        for name, up in tick.get("upstreams", {}).items():
            self.rates.setdefault(name, deque(maxlen=HISTORY)).append(
                float(up.get("requests_per_s") or 0.0)
            )
            self.p99.setdefault(name, deque(maxlen=HISTORY)).append(up.get("p99_ms"))

    def add_event(self, event: Mapping[str, Any]) -> None:
        self.dropped = int(event.get("dropped", self.dropped) or 0)
        if event.get("alert"):
            self.alerts.append(dict(event))

    def left(self, seconds: float | None, now: float) -> float | None:
        """A countdown the tick gave (``seconds`` then), as of ``now``."""
        if seconds is None:
            return None
        return max(seconds - (now - self.tick_at), 0.0)


def _event_text(event: Mapping[str, Any]) -> str:
    fields = event.get("fields", {})
    what = fields.get("key") or fields.get("gate") or fields.get("check") or ""
    why = fields.get("reason") or fields.get("state") or ""
    return " ".join(str(part) for part in (event.get("event", ""), what, why) if part)


def _clock(unix: float | None) -> str:
    if not unix:
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(unix))


# -- the screen ----------------------------------------------------------------------------------
def screen_lines(model: TopModel, width: int, height: int, now: float) -> list[Text]:
    """At most ``height`` lines of at most ``width`` cells: header, lanes, upstreams, breakers,
    gates, outbox, alerts; lists are cut (``+N more``) so everything fits."""
    tick = model.tick
    if tick is None:
        return [Text("kiln top: waiting for the daemon's first tick ...", style="bold")]
    header = _header(model, tick)
    sections = [
        ("LANES  active/slots  queued  rejected/s", _lane_lines(tick)),
        ("UPSTREAMS  req/s  errors  p50  p99  conns", _upstream_lines(model, tick, width)),
        ("BREAKERS", _breaker_lines(model, tick, now, width)),
        ("GATES  tokens  closures", _gate_lines(model, tick, now)),
    ]
    alerts = [_alert_line(a) for a in reversed(model.alerts)] or [Text("  none yet", "dim")]
    budget = height - len(header) - len(sections) - 2  # titles, outbox line, alert title
    rows = _fit([lines for _, lines in sections] + [alerts], budget, keep_last_min=1)
    out = list(header)
    for (title, _), lines in zip(sections, rows, strict=False):
        out.append(Text(title, style="bold underline"))
        out.extend(lines)
    out.append(_outbox_line(tick))
    out.append(Text("LAST ALERTS", style="bold underline"))
    out.extend(rows[-1])
    for line in out:
        line.truncate(width, overflow="ellipsis")
        line.no_wrap = True
    return out[:height]


def _fit(groups: list[list[Text]], budget: int, keep_last_min: int) -> list[list[Text]]:
    """Cut each group so their total fits ``budget`` lines: every group keeps at least one line
    (the last group ``keep_last_min``), the largest lose first, a cut group ends ``+N more``
    (but the last, the alerts, newest first)."""
    sizes = [len(g) for g in groups]
    floor = [1] * len(groups)
    floor[-1] = keep_last_min
    while sum(sizes) > max(budget, sum(floor)):
        i = max(range(len(sizes)), key=lambda k: (sizes[k] - floor[k], -k))
        if sizes[i] <= floor[i]:
            break
        sizes[i] -= 1
    out = []
    for index, (group, size) in enumerate(zip(groups, sizes, strict=True)):
        if size >= len(group):
            out.append(group)
        elif index == len(groups) - 1:
            out.append(group[:size])  # the last group (newest alerts first) is cut silently
        else:
            kept = group[: max(size - 1, 0)]
            kept.append(Text(f"  +{len(group) - len(kept)} more", style="dim"))
            out.append(kept)
    return out


def _header(model: TopModel, tick: Mapping[str, Any]) -> list[Text]:
    health = str(tick.get("health", "?"))
    first = Text.assemble(
        ("kiln top", "bold"),
        f"  claykiln {tick.get('version', '?')}  pid {tick.get('pid', '?')}  "
        f"up {_duration(float(tick.get('uptime_s', 0)))}  ",
        (health, HEALTH_STYLES.get(health, "bold")),
        f"  {_clock(tick.get('time'))}  q: quit",
    )
    calls = tick.get("calls", {})
    server = tick.get("server", {})
    second = Text.assemble(
        f"calls {_num(calls.get('per_s'))}/s ",
        (sparkline(model.calls, 12), "cyan"),
        f"  rpc {_num(server.get('requests_per_s'))}/s  conns {server.get('connections', 0)}",
    )
    if model.dropped:
        second.append(f"  view lost {model.dropped}", style="yellow")
    lines = [first, second]
    if model.status:
        lines.append(Text(model.status, style="bold yellow"))
    return lines


def _lane_lines(tick: Mapping[str, Any]) -> list[Text]:
    lines = []
    for name, lane in tick.get("lanes", {}).items():
        slots = max(int(lane.get("concurrency", 1)), 1)
        active = int(lane.get("active", 0))
        filled = min(round(active / slots * BAR), BAR)
        if active and not filled:
            filled = 1
        style = "red" if active >= slots and lane.get("queued") else "green"
        lines.append(
            Text.assemble(
                f"  {name:<10.10} ",
                ("█" * filled, style),
                ("░" * (BAR - filled), "dim"),
                f" {active:>3}/{slots:<3} q {lane.get('queued', 0):>4}/{lane.get('queue', 0):<5}",
                (
                    f" rej {_num(lane.get('rejected_per_s'))}/s",
                    "red" if lane.get("rejected_per_s") else "",
                ),
            )
        )
    return lines


def _upstream_lines(model: TopModel, tick: Mapping[str, Any], width: int) -> list[Text]:
    lines = []
    for name, up in tick.get("upstreams", {}).items():
        rate = up.get("error_rate")
        error = "-" if rate is None else f"{rate * 100:.1f}%"
        text = Text.assemble(
            f"  {name:<12.12} {_num(up.get('requests_per_s')):>7}/s ",
            (f"{error:>6}", "red" if rate else ""),
            f" {_ms(up.get('p50_ms')):>7} {_ms(up.get('p99_ms')):>7}"
            f" {up.get('connections', 0):>3}/{up.get('max_connections', 0):<3} ",
        )
        room = max(width - text.cell_len - 1, 0)
        if room >= 4:
            text.append(sparkline(model.rates.get(name, ()), min(room, HISTORY)), "cyan")
        lines.append(text)
    return lines


def _breaker_lines(model: TopModel, tick: Mapping[str, Any], now: float, width: int) -> list[Text]:
    """Breakers side by side as long as they fit a line."""
    lines: list[Text] = []
    line = Text("  ")
    for key, view in tick.get("breakers", {}).items():
        state = str(view.get("state"))
        cell = Text.assemble((key, "bold"), " ", (state.upper(), BREAKER_STYLES.get(state, "")))
        left = model.left(view.get("retry_after"), now)
        if left is not None and state in ("open", "half_open"):
            cell.append(f" {left:.1f}s")
        if line.cell_len > 2 and line.cell_len + cell.cell_len + 3 > width:
            lines.append(line)
            line = Text("  ")
        if line.cell_len > 2:
            line.append("   ")
        line.append_text(cell)
    if line.cell_len > 2 or not lines:
        lines.append(line)
    return lines


def _gate_lines(model: TopModel, tick: Mapping[str, Any], now: float) -> list[Text]:
    lines = []
    for name, gate in tick.get("gates", {}).items():
        if gate.get("paced"):
            rate = _num(gate.get("per_second"), "/s", 0)
            tokens = f"{_num(gate.get('tokens'))}/{gate.get('burst')} at {rate}"
        else:
            tokens = "not paced"
        text = Text(f"  {name:<14.14} {tokens:<22}")
        left = model.left(float(gate.get("closed_for") or 0.0), now)
        if gate.get("closed") and left:
            text.append(f"CLOSED {left:.1f}s", style="bold red")
            if gate.get("reason"):
                text.append(f" ({gate['reason']})")
        else:
            text.append("open", style="green")
        if gate.get("waiting"):
            text.append(f"  waiting {gate['waiting']}")
        lines.append(text)
    return lines


def _outbox_line(tick: Mapping[str, Any]) -> Text:
    box = tick.get("outbox", {})
    dead = int(box.get("dead", 0))
    return Text.assemble(
        ("OUTBOX", "bold underline"),
        f"  pending {box.get('pending', 0)}  retry {box.get('retry_wait', 0)}"
        f"  in flight {box.get('in_flight', 0)}  ",
        (f"DLQ {dead}", "bold red" if dead else "green"),
    )


def _alert_line(event: Mapping[str, Any]) -> Text:
    severity = str(event.get("severity") or event.get("level") or "")
    return Text.assemble(
        f"  {_clock(event.get('time'))} ",
        (f"{severity:<8}", SEVERITY_STYLES.get(severity, "")),
        f" {_event_text(event)}",
    )


# -- plain lines ---------------------------------------------------------------------------------
def plain_snapshot(tick: Mapping[str, Any]) -> list[str]:
    """Every lane, upstream, breaker and gate and the outbox counts, one per line."""
    lines = [
        f"claykiln {tick.get('version')} pid {tick.get('pid')} health {tick.get('health')} "
        f"calls {_num(tick.get('calls', {}).get('per_s'))}/s"
    ]
    for name, lane in tick.get("lanes", {}).items():
        lines.append(
            f"lane {name} active {lane.get('active')}/{lane.get('concurrency')} "
            f"queued {lane.get('queued')}/{lane.get('queue')} rejected {lane.get('rejected')}"
        )
    for name, up in tick.get("upstreams", {}).items():
        rate = up.get("error_rate")
        lines.append(
            f"upstream {name} requests {_num(up.get('requests_per_s'))}/s errors "
            f"{'-' if rate is None else f'{rate * 100:.1f}%'} p50 {_ms(up.get('p50_ms'))} "
            f"p99 {_ms(up.get('p99_ms'))} connections {up.get('connections')}"
        )
    for key, view in tick.get("breakers", {}).items():
        retry = view.get("retry_after")
        lines.append(
            f"breaker {key} {view.get('state')}"
            + ("" if retry is None else f" retry_after {retry:.1f}s")
        )
    for name, gate in tick.get("gates", {}).items():
        state = f"closed {gate.get('closed_for', 0):.1f}s" if gate.get("closed") else "open"
        tokens = (
            f"tokens {_num(gate.get('tokens'))}/{gate.get('burst')}"
            if gate.get("paced")
            else "not paced"
        )
        lines.append(f"gate {name} {tokens} {state}")
    box = tick.get("outbox", {})
    lines.append(
        f"outbox pending {box.get('pending', 0)} retry_wait {box.get('retry_wait', 0)} "
        f"in_flight {box.get('in_flight', 0)} dead {box.get('dead', 0)}"
    )
    lines.append(f"dlq {box.get('dead', 0)}")
    return lines


def plain_tick(tick: Mapping[str, Any]) -> str:
    """One line per tick: the time, health, call rate, busy lanes, open breakers, closed gates,
    and the DLQ."""
    lanes = " ".join(
        f"{n}={lane.get('active')}/{lane.get('concurrency')}+{lane.get('queued')}"
        for n, lane in tick.get("lanes", {}).items()
    )
    ups = " ".join(
        f"{n}={_num(u.get('requests_per_s'))}/s,p99={_ms(u.get('p99_ms'))}"
        for n, u in tick.get("upstreams", {}).items()
    )
    refusing = [k for k, v in tick.get("breakers", {}).items() if v.get("state") != "closed"]
    closed = [n for n, g in tick.get("gates", {}).items() if g.get("closed")]
    return (
        f"{_clock(tick.get('time'))} {tick.get('health')} "
        f"calls={_num(tick.get('calls', {}).get('per_s'))}/s lanes {lanes} upstreams {ups} "
        f"breakers_not_closed={','.join(refusing) or '-'} gates_closed={','.join(closed) or '-'} "
        f"dlq={tick.get('outbox', {}).get('dead', 0)}"
    )


def plain_event(event: Mapping[str, Any]) -> str:
    """One line per event."""
    severity = event.get("severity") or event.get("level")
    return f"{_clock(event.get('time'))} {severity} {_event_text(event)}"
