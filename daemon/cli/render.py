"""Rich rendering of CLI results on a terminal (``--json`` or a pipe prints JSON instead)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_breakers", "render_status"]

HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
STATE_STYLE = {"closed": "green", "half_open": "yellow", "open": "red", "forced_open": "red"}


def render_status(status: dict[str, Any]) -> None:
    console = Console()
    health = status.get("health", "?")
    console.print(
        f"claykiln {status.get('version')}  pid {status.get('pid')}  "
        f"up {status.get('uptime_s', 0):.0f}s  "
        f"[{HEALTH_STYLE.get(health, 'white')}]{health}[/]"
    )
    server = status.get("server", {})
    storage = status.get("storage", {})
    console.print(
        f"connections {server.get('connections')}  requests {server.get('requests')}  "
        f"in flight {server.get('in_flight')}  protocol errors {server.get('protocol_errors')}"
    )
    console.print(
        f"storage {storage.get('used_bytes', 0) / 1e6:.1f} MB of "
        f"{storage.get('max_map_size', 0) / 1e6:.0f} MB ({storage.get('ratio', 0):.1%}), "
        f"{storage.get('transactions')} transactions"
    )
    process = status.get("process")
    if process:
        console.print(
            f"memory {process.get('rss_bytes', 0) / 1e6:.1f} MB  "
            f"cpu {process.get('cpu_s', 0):.1f} s  threads {process.get('threads')}"
        )
    actors = Table("actor", "state", title="actors")
    for name, state in sorted(status.get("actors", {}).items()):
        actors.add_row(name, state)
    console.print(actors)
    lanes = Table("lane", "active", "queued", "concurrency", "queue", title="lanes")
    for name, lane in sorted(status.get("lanes", {}).get("lanes", {}).items()):
        lanes.add_row(
            name,
            str(lane.get("active")),
            str(lane.get("queued")),
            str(lane.get("concurrency")),
            str(lane.get("queue")),
        )
    console.print(lanes)
    breakers = status.get("breakers", {}).get("breakers", {})
    if breakers:
        table = Table("breaker", "state", title="breakers")
        for key, state in sorted(breakers.items()):
            table.add_row(key, f"[{STATE_STYLE.get(state, 'white')}]{state}[/]")
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
