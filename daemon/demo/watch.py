"""Watching the demo: the daemon's status and breakers, the simulator's counters, over time.

``Watch`` polls the daemon's ``status`` and ``breaker.list`` over its socket and the simulator's
``/_sim/stats`` (every ``POLL_INTERVAL`` s in ``run``; the daemon alone, on demand, in
``wait_for``) and remembers the highlights a phase reports: each closure of every rate gate it
saw (which gate, how long it had left, why, how many callers waited), every breaker's states in
the order seen, the peak depth of every lane, and enough row counts to tell the rows Clay stored
in the last second. A daemon or a simulator that stops answering raises ``DemoError``.

Rate gates are read by key from ``status.gate.upstreams`` (keyed by gate name): the embedded
default's ``clay`` paces webhook pushes and ``clay-public`` holds the Public API's calls. An
unpaced gate is listed only once an operation on it was called; until then ``gate`` answers
``{}`` (open, unused).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs
import trio

from claykiln.daemon.client._errors import KilnError
from claykiln.daemon.demo.model import DemoError, SimCounters
from claykiln.daemon.demo.sim import DemoSimulator

__all__ = [
    "BREAKER_KEY",
    "POLL_INTERVAL",
    "PUBLIC_GATE",
    "WAIT_SLACK",
    "WEBHOOK_GATE",
    "GateSighting",
    "PhaseStuck",
    "Watch",
    "stuck_after",
]

POLL_INTERVAL: Final = 0.1
"""Seconds between two background polls (the live view's refresh rate)."""
FAST_POLL: Final = 0.02
"""Seconds between two polls while a phase waits for a state."""
STATUS_TIMEOUT: Final = 5.0
WAIT_SLACK: Final = 10.0
"""Seconds added to every wait for a state the daemon should reach (a loaded machine is slow)."""
BREAKER_KEY: Final = "clay"
"""The breaker shown before the daemon lists any (the upstream's, ``breaker = "upstream"``)."""
WEBHOOK_GATE: Final = "clay"
"""The gate pacing webhook pushes (``push_row``) at Clay's webhook limit."""
PUBLIC_GATE: Final = "clay-public"
"""The gate of the Public API's operations (``me``, ``start_routine``, ``poll_routine``)."""
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
    """One closure of a gate as the status polls saw it (times: seconds since the start).

    ``reopens_in``: what was left of the closure when first seen (the status's ``closed_for``),
    not its length (the Retry-After, in the daemon's ``gate.closed`` log event)."""

    gate: str
    first_seen: float
    reopens_in: float
    reason: str | None
    max_waiting: int = 0
    last_seen: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "first_seen_s": round(self.first_seen, 3),
            "reopens_in_at_first_sight_s": self.reopens_in,
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
        self.breaker_states: dict[str, list[str]] = {}  # key -> its states, in the order seen
        self.lane_peaks: dict[str, dict[str, int]] = {}
        self.polls = 0
        self._in_closure: set[str] = set()  # gates whose current closure has a sighting
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

    def gates(self) -> dict[str, dict[str, Any]]:
        """Every gate the daemon lists, by gate name."""
        gates: dict[str, dict[str, Any]] = self.status.get("gate", {}).get("upstreams", {})
        return gates

    def gate(self, key: str) -> dict[str, Any]:
        """One gate's stats (``closed``, ``closed_for``, ``waiting``, ``tokens`` ...); ``{}``
        while the daemon does not list it (an unpaced gate no operation has used yet)."""
        return self.gates().get(key, {})

    def gate_sighting(self, key: str) -> GateSighting | None:
        """The latest closure of gate ``key`` seen so far, if any."""
        return next((s for s in reversed(self.gate_sightings) if s.gate == key), None)

    def breaker(self, key: str = BREAKER_KEY) -> dict[str, Any]:
        """One breaker's view (``state``, ``retry_after``, ``calls``, ``error_rate`` ...);
        closed while the daemon does not list it (never used)."""
        for view in self.breakers:
            if view.get("key") == key:
                return view
        return {"key": key, "state": "closed"}

    def breaker_state(self, key: str = BREAKER_KEY) -> str:
        return str(self.breaker(key).get("state", "closed"))

    def lane(self, name: str) -> dict[str, Any]:
        """One lane's stats (``active``, ``queued``, ``rejected`` ...)."""
        lane: dict[str, Any] = self.status.get("lanes", {}).get("lanes", {}).get(name, {})
        return lane

    def _learn(self, now: float) -> None:
        for view in self.breakers:
            states = self.breaker_states.setdefault(str(view.get("key")), [])
            state = str(view.get("state"))
            if not states or states[-1] != state:
                states.append(state)
        for name, lane in self.status.get("lanes", {}).get("lanes", {}).items():
            peak = self.lane_peaks.setdefault(name, {"active": 0, "queued": 0})
            peak["active"] = max(peak["active"], int(lane.get("active", 0)))
            peak["queued"] = max(peak["queued"], int(lane.get("queued", 0)))
        for key, gate in self.gates().items():
            if not gate.get("closed"):
                self._in_closure.discard(key)
                continue
            sighting = self.gate_sighting(key)
            if sighting is None or key not in self._in_closure:
                reopens_in = float(gate.get("closed_for", 0.0))
                sighting = GateSighting(key, now, reopens_in, gate.get("reason"))
                self.gate_sightings.append(sighting)
                self._in_closure.add(key)
            sighting.max_waiting = max(sighting.max_waiting, int(gate.get("waiting", 0)))
            sighting.last_seen = now
