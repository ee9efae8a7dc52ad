"""Rich rendering of CLI results on a terminal (``--json`` or a pipe prints JSON instead)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from claykiln.actors.health_checks import format_bytes

__all__ = ["render_breakers", "render_status"]

HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
STATE_STYLE = {"closed": "green", "half_open": "yellow", "open": "red", "forced_open": "red"}


def _health(state: object) -> str:
    word = str(state)
    return f"[{HEALTH_STYLE.get(word, 'white')}]{word}[/]"


def _ago(seconds: object) -> str:
    """``42s``, ``3m``, ``2h``, ``5d``: how long a state has held."""
    if not isinstance(seconds, int | float):
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def render_status(status: dict[str, Any]) -> None:
    """``kiln status`` on a terminal: the header, the health checks, then gates, upstreams,
    lanes, breakers and actors (``--json`` prints everything)."""
    console = Console()
    health = status.get("health", "?")
    console.print(
        f"claykiln {status.get('version')}  pid {status.get('pid')}  "
        f"up {_ago(status.get('uptime_s', 0))}  {_health(health)}"
    )
    server = status.get("server", {})
    storage = status.get("storage", {})
    console.print(
        f"connections {server.get('connections')}  requests {server.get('requests')}  "
        f"in flight {server.get('in_flight')}  protocol errors {server.get('protocol_errors')}"
    )
    console.print(
        f"storage {format_bytes(storage.get('used_bytes', 0))} of "
        f"{format_bytes(storage.get('max_map_size', 0))} ({storage.get('ratio', 0):.1%}), "
        f"{storage.get('transactions')} transactions, {storage.get('failed', 0)} failed writes"
    )
    process = status.get("process")
    if process:
        console.print(
            f"memory {format_bytes(process.get('rss_bytes', 0))}  "
            f"cpu {process.get('cpu_s', 0):.1f} s  threads {process.get('threads')}"
        )
    _checks(console, status.get("checks", {}))
    _gates(console, status.get("gate", {}).get("upstreams", {}))
    _upstreams(console, status.get("upstreams", {}), status.get("checks", {}))
    lanes = Table("lane", "active", "queued", "concurrency", "queue", "rejected", title="lanes")
    for name, lane in sorted(status.get("lanes", {}).get("lanes", {}).items()):
        lanes.add_row(
            name,
            str(lane.get("active")),
            str(lane.get("queued")),
            str(lane.get("concurrency")),
            str(lane.get("queue")),
            str(lane.get("rejected", "")),
        )
    console.print(lanes)
    breakers = status.get("breakers", {}).get("breakers", {})
    if breakers:
        table = Table("breaker", "state", title="breakers")
        for key, state in sorted(breakers.items()):
            table.add_row(key, f"[{STATE_STYLE.get(state, 'white')}]{state}[/]")
        console.print(table)
    actors = Table("actor", "state", title="actors")
    for name, state in sorted(status.get("actors", {}).items()):
        actors.add_row(name, state)
    console.print(actors)


def _checks(console: Console, section: dict[str, Any]) -> None:
    checks = section.get("checks", {})
    if not checks:
        return
    table = Table("check", "state", "for", "reason", title="health checks")
    order = {"unhealthy": 0, "degraded": 1, "healthy": 2}
    for name, check in sorted(checks.items(), key=lambda i: (order.get(i[1]["state"], 0), i[0])):
        table.add_row(name, _health(check.get("state")), _ago(check.get("for_s")), check["reason"])
    console.print(table)


def _gates(console: Console, gates: dict[str, Any]) -> None:
    if not gates:
        return
    table = Table("gate", "pacing", "tokens", "state", "admitted", "limited", title="gates")
    for name, gate in sorted(gates.items()):
        pacing = (
            f"{gate['per_second']:g}/s, burst {gate['burst']}" if gate.get("paced") else "unpaced"
        )
        tokens = gate.get("tokens")
        if gate.get("closed"):
            state = f"[red]closed[/] {gate.get('closed_for', 0):.1f} s more ({gate.get('reason')})"
        else:
            state = "[green]open[/]"
        table.add_row(
            name,
            pacing,
            "" if tokens is None else f"{tokens:.1f}",
            state,
            str(gate.get("admitted", "")),
            str(gate.get("limited", "")),
        )
    console.print(table)


def _upstreams(console: Console, pools: dict[str, Any], checks: dict[str, Any]) -> None:
    if not pools:
        return
    table = Table(
        "upstream",
        "reachability",
        "critical",
        "requests",
        "answers",
        "connect failures",
        "timeouts",
        "in use / idle",
        title="upstreams",
    )
    found = checks.get("checks", {})
    for name, pool in sorted(pools.items()):
        check = found.get(f"upstream.{name}", {})
        reach = check.get("state")
        table.add_row(
            name,
            "" if reach is None else ("reachable" if reach == "healthy" else _health(reach)),
            "yes" if pool.get("critical") else "no",
            str(pool.get("requests", "")),
            str(pool.get("answers", "")),
            str(pool.get("connect_failures", "")),
            str(pool.get("timeouts", "")),
            f"{pool.get('in_use', 0)} / {pool.get('idle', 0)}",
        )
    console.print(table)


def render_breakers(views: list[dict[str, Any]]) -> None:
    console = Console()
    table = Table("breaker", "state", "calls", "error rate", "retry after", title="breakers")
    for view in views:
        state = str(view.get("state"))
        rate = view.get("error_rate")
        retry = view.get("retry_after")
        table.add_row(
            str(view.get("key")),
            f"[{STATE_STYLE.get(state, 'white')}]{state}[/]",
            str(view.get("calls", "")),
            f"{rate:.0%}" if isinstance(rate, int | float) else "",
            f"{retry:.1f}s" if isinstance(retry, int | float) else "",
        )
    if not views:
        console.print("no breakers yet (they appear after the first call to an upstream)")
        return
    console.print(table)
