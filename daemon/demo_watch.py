"""Watching the demo: the daemon's status and breakers, the simulator's counters, over time.

``Watch`` polls the daemon's ``status`` and ``breaker.list`` over its socket and the simulator's
``/_sim/stats`` (every ``POLL_INTERVAL`` s in ``run``; the daemon alone, on demand, in
``wait_for``) and remembers the highlights a phase reports: each gate closure it saw (how long,
why, how many callers waited), the breaker states in the order seen, the peak depth of every
lane, and enough row counts to tell the rows Clay stored in the last second. A daemon or a
simulator that stops answering raises ``DemoError``.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs
import trio

from .demo_model import DemoError, SimCounters
from .demo_sim import DemoSimulator
from .errors import KilnError

__all__ = ["POLL_INTERVAL", "GateSighting", "PhaseStuck", "Watch", "stuck_after"]

POLL_INTERVAL: Final = 0.1
"""Seconds between two background polls (the live view's refresh rate)."""
FAST_POLL: Final = 0.02
"""Seconds between two polls while a phase waits for a state."""
STATUS_TIMEOUT: Final = 5.0
UPSTREAM: Final = "clay"
RATE_WINDOW: Final = 1.0
"""Seconds over which ``stored_per_s`` counts the rows a webhook stored."""
HISTORY_SIZE: Final = 64
"""Polls of row counts kept (at POLL_INTERVAL, several times RATE_WINDOW)."""


class PhaseStuck(Exception):
    """A state a phase waits for did not come within its bound; the message says which."""


@contextlib.contextmanager
def stuck_after(seconds: float, what: str) -> Iterator[None]:
    """Bound the block to ``seconds``; past it, raise ``PhaseStuck`` saying ``what`` was awaited."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        msg = f"waited {seconds:g} s for {what}; it did not happen"
        raise PhaseStuck(msg) from None


@attrs.define
class GateSighting:
    """One closure of the gate as the status polls saw it (times: seconds since the start)."""

    first_seen: float
    closed_for: float
    reason: str | None
    max_waiting: int = 0
    last_seen: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "first_seen_s": round(self.first_seen, 3),
            "closed_for_at_first_sight_s": self.closed_for,
            "seen_closed_for_s": round(self.last_seen - self.first_seen, 3),
            "reason": self.reason,
            "max_waiting": self.max_waiting,
        }


class Watch:
    """Polls the daemon; the latest ``status`` and ``breakers`` plus the highlights so far."""

    def __init__(self, client: Any, sim: DemoSimulator, t0: float) -> None:
        self.client = client  # a TrioClient (typed loosely: it is imported lazily)
        self.sim = sim
        self.t0 = t0
        self.clay = SimCounters({}, {})
        self._stored: deque[tuple[float, dict[str, int]]] = deque(maxlen=HISTORY_SIZE)
        self.status: dict[str, Any] = {}
        self.breakers: list[dict[str, Any]] = []
        self.gate_sightings: list[GateSighting] = []
        self.breaker_states: list[str] = []
        self.lane_peaks: dict[str, dict[str, int]] = {}
        self.polls = 0
        self._in_closure = False
        self.on_tick: Callable[[], None] = lambda: None

    async def poll(self, *, clay: bool = False) -> None:
        """Ask the daemon for ``status`` and ``breaker.list`` (and, with ``clay``, the simulator
        for its counters) once and learn from the answers."""
        try:
            self.status = await self.client.status(timeout=STATUS_TIMEOUT)
            self.breakers = await self.client.breaker_list(timeout=STATUS_TIMEOUT)
        except KilnError as exc:
            msg = f"the daemon stopped answering its socket: {exc}"
            raise DemoError(msg) from exc
        now = trio.current_time()
        if clay:
            stats = await self.sim.stats()
            self.clay = SimCounters.from_stats(stats)
            stored = {k: int(v.get("stored", 0)) for k, v in stats.get("webhooks", {}).items()}
            self._stored.append((now, stored))
        self.polls += 1
        self._learn(now - self.t0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll every ``POLL_INTERVAL`` s until cancelled, calling ``on_tick`` after each poll."""
        await self.poll(clay=True)
        task_status.started()
        while True:
            self.on_tick()
            await trio.sleep(POLL_INTERVAL)
            await self.poll(clay=True)

    def stored_per_s(self, webhook_id: str) -> tuple[int, int]:
        """(rows stored so far, rows stored in the last ``RATE_WINDOW`` s) by a webhook, as of
        the latest simulator poll."""
        if not self._stored:
            return 0, 0
        now, latest = self._stored[-1]
        earlier = self._stored[0][1]
        for when, counts in self._stored:
            if when >= now - RATE_WINDOW:
                break
            earlier = counts
        total = latest.get(webhook_id, 0)
        return total, total - earlier.get(webhook_id, 0)

    async def wait_for(self, predicate: Callable[[Watch], bool]) -> None:
        """Poll the daemon until ``predicate(self)`` holds (bound it with ``stuck_after``)."""
        while True:
            await self.poll()
            if predicate(self):
                return
            await trio.sleep(FAST_POLL)

    # -- views of the latest poll ---------------------------------------------------------

    def gate(self) -> dict[str, Any]:
        """The clay gate's stats (``closed``, ``closed_for``, ``waiting``, ``tokens`` ...)."""
        upstreams = self.status.get("gate", {}).get("upstreams", {})
        gate: dict[str, Any] = upstreams.get(UPSTREAM, {})
        return gate

    def breaker(self) -> dict[str, Any]:
        """The clay breaker's view (``state``, ``retry_after``, ``calls``, ``error_rate`` ...)."""
        for view in self.breakers:
            if view.get("key") == UPSTREAM:
                return view
        return {"key": UPSTREAM, "state": "closed"}

    def breaker_state(self) -> str:
        return str(self.breaker().get("state", "closed"))

    def lane(self, name: str) -> dict[str, Any]:
        """One lane's stats (``active``, ``queued``, ``rejected`` ...)."""
        lane: dict[str, Any] = self.status.get("lanes", {}).get("lanes", {}).get(name, {})
        return lane

    def _learn(self, now: float) -> None:
        state = self.breaker_state()
        if not self.breaker_states or self.breaker_states[-1] != state:
            self.breaker_states.append(state)
        for name, lane in self.status.get("lanes", {}).get("lanes", {}).items():
            peak = self.lane_peaks.setdefault(name, {"active": 0, "queued": 0})
            peak["active"] = max(peak["active"], int(lane.get("active", 0)))
            peak["queued"] = max(peak["queued"], int(lane.get("queued", 0)))
        gate = self.gate()
        sighting = self.gate_sightings[-1] if self.gate_sightings else None
        if not gate.get("closed"):
            self._in_closure = False
            return
        if sighting is None or not self._in_closure:
            sighting = GateSighting(now, float(gate.get("closed_for", 0.0)), gate.get("reason"))
            self.gate_sightings.append(sighting)
            self._in_closure = True
        sighting.max_waiting = max(sighting.max_waiting, int(gate.get("waiting", 0)))
        sighting.last_seen = now
