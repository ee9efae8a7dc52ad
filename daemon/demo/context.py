"""What every phase of ``kiln demo`` works with: the plan, both processes, the clients.

``DemoContext`` bundles them with the few helpers the phases share: the calls the app makes
(push a row through a webhook; on the Public API: ask who we are, start a routine run, poll
it), the simulator's counters since a phase began, and the breaker's transitions from the
daemon's log.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import trio

from claykiln.daemon.demo.daemon import DemoDaemon, event_time
from claykiln.daemon.demo.model import DemoPlan, Phase, SimCounters, Tally
from claykiln.daemon.demo.sim import DemoSimulator
from claykiln.daemon.demo.watch import Watch

__all__ = ["BULK_TABLE", "ROUTINE", "TABLE", "DemoContext"]

ROUTINE: Final = "rt_demo_enrich"
"""The routine the app starts and polls through the Public API (phase 2)."""
TABLE: Final = "wh_demo_signups"
"""The webhook of the table the app pushes sign-ups into (phases 1 and 2)."""
BULK_TABLE: Final = "wh_demo_backfill"
"""The webhook of the table a backfill floods (phase 4)."""
BREAKER_EVENTS: Final = ("breaker.opened", "breaker.half_open", "breaker.closed")


@attrs.frozen
class DemoContext:
    """What every phase works with; ``t0`` is the trio time the demo started.

    ``public_breaker`` and ``webhook_breaker``: the breaker keys of ``me`` (the Public API) and
    of ``push_row`` (table webhooks) under the daemon's config (``operation_breaker``)."""

    plan: DemoPlan
    sim: DemoSimulator
    daemon: DemoDaemon
    app: Any  # TrioClient: the "application" making calls
    watch: Watch
    t0: float
    public_breaker: str = "clay"
    webhook_breaker: str = "clay"

    def push(self, table: str, n: int, **kw: Any) -> Awaitable[dict[str, Any]]:
        """Push row ``n`` into a table's webhook through the daemon (operation push_row)."""
        row = {"email": f"lead{n:04d}@example.com", "n": n, "source": "kiln demo"}
        call: Awaitable[dict[str, Any]] = self.app.call(
            "push_row", path_params={"webhook_id": table}, json=row, **kw
        )
        return call

    async def push_while(self, tally: Tally, first_row: int, going: Callable[[], bool]) -> None:
        """Push rows ``first_row``, ``first_row + 1`` ... into TABLE, one every ``1 / rate`` s
        (the webhook's own pace), while ``going()`` holds."""
        n = first_row
        while going():
            await tally.run(self.push(TABLE, n))
            n += 1
            await trio.sleep(1.0 / self.plan.rate)

    def me(self, **kw: Any) -> Awaitable[dict[str, Any]]:
        """Ask Clay's public API who we are through the daemon (operation me)."""
        call: Awaitable[dict[str, Any]] = self.app.call("me", **kw)
        return call

    def start_routine(self, routine: str, **kw: Any) -> Awaitable[dict[str, Any]]:
        """Start a run of ``routine`` on Clay's public API (operation start_routine).

        Starting twice runs twice, so the app names this start with an idempotency key (a
        retry with the same key would get this start's answer)."""
        kw.setdefault("idempotency_key", f"kiln-demo-start-{uuid.uuid4()}")
        call: Awaitable[dict[str, Any]] = self.app.call(
            "start_routine", path_params={"routine_id": routine}, json={"source": "kiln demo"}, **kw
        )
        return call

    def poll_routine(self, routine: str, run_id: str, **kw: Any) -> Awaitable[dict[str, Any]]:
        """Poll a run of ``routine`` on Clay's public API (operation poll_routine)."""
        params = {"routine_id": routine, "run_id": run_id}
        call: Awaitable[dict[str, Any]] = self.app.call("poll_routine", path_params=params, **kw)
        return call

    async def since(self, phase: Phase) -> SimCounters:
        """What the simulator counted since ``phase`` began."""
        assert phase.before is not None
        return (await self.sim.counters()).minus(phase.before)

    def breaker_events(self, key: str, after: float) -> list[dict[str, Any]]:
        """Breaker ``key``'s transitions logged at or after wall time ``after``."""
        return [
            e
            for e in self.daemon.events(BREAKER_EVENTS)
            if e.get("key") == key and (event_time(e) or 0.0) >= after
        ]
