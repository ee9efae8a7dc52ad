"""The health monitor's decisions, sans I/O: what each input means, damping, the snapshot.

Everything here is a plain function or a small class the health actor (``actors/health.py``)
owns; nothing awaits, nothing reads a clock (times are passed in, trio time in seconds).

- ``Level``: healthy < degraded < unhealthy (``kiln status`` exits 0, 1, 2).
- ``Verdict``: a level and the reason an operator reads ("breaker clay is open").
- One verdict function per input (``breakers_verdict``, ``dead_letters_verdict``,
  ``storage_verdict``, ``reachability_verdict``, ``liveness_verdict``,
  ``credentials_verdict``) and ``LaneSaturation`` for the lanes (saturated for a window).
- ``Counted``: a cumulative counter sampled over time, read as "how many in the last window".
- ``Damper``: a check's published verdict is its worst reading of the last ``hold`` seconds:
  it gets worse at once and better only once the better readings have held for ``hold``, so a
  state other than healthy lasts at least ``hold`` and an input flapping faster than that is
  reported once bad and once recovered (docs/alerting.md, "Health").
- ``HealthSnapshot``: what the actor publishes: the overall level (the worst check), every check
  with its reason and since when, and ``stuck``: what a restart would fix (an actor stopped or
  not answering, the storage writer stalled), which the watchdog reads.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

__all__ = [
    "REFUSING_BREAKER_STATES",
    "WRITER_STALLED",
    "CheckStatus",
    "Counted",
    "CredentialRejection",
    "Damper",
    "HealthSnapshot",
    "LaneSample",
    "LaneSaturation",
    "Level",
    "Verdict",
    "breakers_verdict",
    "credentials_verdict",
    "dead_letters_verdict",
    "format_bytes",
    "liveness_verdict",
    "reachability_verdict",
    "storage_verdict",
    "worst",
]

REFUSING_BREAKER_STATES: Final = ("open", "half_open", "forced_open")
WRITER_STALLED: Final = "writer (stalled)"  # how ``HealthSnapshot.stuck`` names a stalled writer


class Level(enum.IntEnum):
    """A check's (and the daemon's) health; the value is ``kiln status``'s exit code."""

    HEALTHY = 0
    DEGRADED = 1
    UNHEALTHY = 2

    @property
    def word(self) -> str:
        """``healthy``, ``degraded`` or ``unhealthy`` (what the wire and the log say)."""
        return self.name.lower()


@attrs.frozen
class Verdict:
    """One reading of a check: its level and why."""

    level: Level
    reason: str


@attrs.frozen
class CheckStatus:
    """A check as published: its damped level and reason, since when (trio time)."""

    name: str
    level: Level
    reason: str
    since: float

    def to_wire(self, now: float, wall_now: float) -> dict[str, Any]:
        """Plain values for ``status``: ``since`` as wall-clock seconds, ``for_s`` its age."""
        return {
            "state": self.level.word,
            "reason": self.reason,
            "since": round(wall_now - (now - self.since), 3),
            "for_s": round(now - self.since, 3),
        }


def worst(levels: Iterable[Level]) -> Level:
    """The worst of ``levels`` (healthy when there are none)."""
    return max(levels, default=Level.HEALTHY)


@attrs.define
class Damper:
    """The published verdict of one check, damped against flapping: the worst reading of the
    last ``hold`` seconds (the newest one always counts).

    So a check gets worse at once, gets better only once no worse reading came for ``hold``
    seconds, and a state other than healthy lasts at least ``hold``. ``observe`` returns the
    previous published verdict when the level changed (the caller logs the transition), else
    None; at the same level only the reason is refreshed (the newest reading at that level:
    reasons carry counts that change every sample), without a transition.
    """

    published: Verdict
    since: float
    recent: deque[tuple[float, Verdict]] = attrs.field(factory=deque)

    def observe(self, reading: Verdict, now: float, hold: float) -> Verdict | None:
        recent = self.recent
        recent.append((now, reading))
        while len(recent) > 1 and recent[0][0] <= now - hold:
            recent.popleft()
        level = max(v.level for _, v in recent)
        shown = next(v for _, v in reversed(recent) if v.level == level)
        previous = self.published
        self.published = shown
        if level == previous.level:
            return None
        self.since = now
        return previous


@attrs.define
class Counted:
    """A cumulative counter (never decreasing, e.g. a pool's connect failures) sampled over
    time; ``recent`` is how much it grew over the last ``window`` seconds."""

    samples: deque[tuple[float, int]] = attrs.field(factory=deque)

    def add(self, now: float, value: int, window: float) -> None:
        """Record ``value`` at ``now``; forget samples older than the window (one is kept at or
        before its start, the baseline)."""
        samples = self.samples
        samples.append((now, value))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()

    def recent(self) -> int:
        """Growth from the oldest sample kept to the newest (0 with fewer than two)."""
        if len(self.samples) < 2:
            return 0
        return max(0, self.samples[-1][1] - self.samples[0][1])


# -- the inputs ------------------------------------------------------------------------------


def breakers_verdict(states: Mapping[str, str]) -> Verdict:
    """Degraded while any breaker refuses calls (open, half-open or forced open)."""
    refusing = sorted(
        (key, state) for key, state in states.items() if state in REFUSING_BREAKER_STATES
    )
    if refusing:
        listed = ", ".join(f"breaker {key} is {state}" for key, state in refusing)
        return Verdict(Level.DEGRADED, listed)
    return Verdict(Level.HEALTHY, f"{len(states)} breaker(s), none refusing calls")


def dead_letters_verdict(dead: int, threshold: int) -> Verdict:
    """Degraded while the dead-letter queue holds more than ``threshold`` jobs."""
    if dead > threshold:
        return Verdict(
            Level.DEGRADED,
            f"{dead} jobs in the dead-letter queue (more than {threshold}); see kiln dlq list",
        )
    return Verdict(Level.HEALTHY, f"{dead} jobs in the dead-letter queue")


def format_bytes(size: float) -> str:
    """A size for people, in binary units: ``512 B``, ``16.0 KiB``, ``4.0 GiB``."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{int(size)} B"


def storage_verdict(
    *,
    used: int,
    ceiling: int,
    disk_bound: bool,
    failed_writes: int,
    stalled_for: float,
    queued: int,
    degraded_ratio: float,
    unhealthy_ratio: float,
    writer_stall: float,
    window: float,
) -> Verdict:
    """The store against its ceiling (``max_map_size``, or the disk under it when that is
    smaller: ``disk_bound``), writes failing in the last window, and the writer stalled
    (nothing committed for ``writer_stall`` seconds with writes queued)."""
    ratio = used / ceiling if ceiling > 0 else 1.0
    of_what = "the disk under the store" if disk_bound else "max_map_size"
    usage = f"storage {ratio:.0%} full ({format_bytes(used)} of {format_bytes(ceiling)}, {of_what})"
    if stalled_for >= writer_stall and queued:
        return Verdict(
            Level.UNHEALTHY,
            f"the storage writer committed nothing for {stalled_for:.0f} s with {queued} "
            "write(s) queued",
        )
    if failed_writes:
        return Verdict(
            Level.UNHEALTHY,
            f"{failed_writes} storage write(s) failed in the last {window:.0f} s ({usage}); "
            "free space or raise [daemon.storage] max_map_size",
        )
    if ratio >= unhealthy_ratio:
        return Verdict(Level.UNHEALTHY, usage)
    if ratio >= degraded_ratio:
        return Verdict(Level.DEGRADED, usage)
    return Verdict(Level.HEALTHY, usage)


def reachability_verdict(
    *,
    answers: int,
    failures: int,
    min_failures: int,
    critical: bool,
    window: float,
    probe: str | None = None,
) -> Verdict:
    """Unreachable when, over the last ``window``, at least ``min_failures`` attempts failed to
    connect or timed out and none got an HTTP answer (any status: a 500 is the breaker's
    business); unhealthy for a ``critical`` upstream, else degraded. ``probe`` describes the
    last active probe, when there is one."""
    last = f"; last probe: {probe}" if probe else ""
    if failures >= min_failures and answers == 0:
        return Verdict(
            Level.UNHEALTHY if critical else Level.DEGRADED,
            f"unreachable: {failures} connect failure(s) or timeout(s) and no answer in the "
            f"last {window:.0f} s{last}",
        )
    return Verdict(
        Level.HEALTHY,
        f"{answers} answer(s), {failures} connect failure(s) or timeout(s) in the last "
        f"{window:.0f} s{last}",
    )


def liveness_verdict(
    states: Mapping[str, str], unanswered: Mapping[str, float], timeout: float
) -> Verdict:
    """Unhealthy when an actor has stopped, or has left a liveness ask unanswered for
    ``timeout`` seconds (``unanswered``: actor -> seconds its ask has waited); one still
    starting is neither."""
    stopped = sorted(name for name, state in states.items() if state == "stopped")
    wedged = sorted(name for name, age in unanswered.items() if age >= timeout)
    problems = [f"actor {name} is {states[name]}" for name in stopped]
    problems += [
        f"actor {name} has not answered a liveness ask for {unanswered[name]:.0f} s"
        for name in wedged
    ]
    if problems:
        return Verdict(Level.UNHEALTHY, "; ".join(problems))
    return Verdict(Level.HEALTHY, f"{len(states)} actor(s) running and answering")


@attrs.frozen
class CredentialRejection:
    """An upstream refused a credential: which, where its file is, who said so."""

    credential: str
    path: str
    upstream: str
    operation: str
    status: int
    missing: bool  # the file was absent: the call went without the header


def credentials_verdict(rejections: Iterable[CredentialRejection]) -> Verdict:
    """Degraded while an upstream's last word on a credential was 401 or 403."""
    items = sorted(rejections, key=lambda r: r.credential)
    if not items:
        return Verdict(Level.HEALTHY, "no credential rejected")
    parts = []
    for r in items:
        why = " (the file is missing, so the call went without it)" if r.missing else ""
        parts.append(
            f"credential {r.credential} ({r.path}) rejected: {r.upstream} answered {r.status} "
            f"to {r.operation}{why}"
        )
    return Verdict(Level.DEGRADED, "; ".join(parts))


@attrs.frozen
class LaneSample:
    """What the lanes check reads of one lane at one sample."""

    full: bool  # every slot busy and the queue full
    rejected: int  # cumulative lane_full refusals


@attrs.define
class LaneSaturation:
    """Per lane: since when it has been saturated (queue full, or refusing callers) at every
    sample; ``verdict`` is degraded for a lane saturated for ``window`` seconds or more."""

    saturated_since: dict[str, float] = attrs.field(factory=dict)
    last_rejected: dict[str, int] = attrs.field(factory=dict)

    def sample(self, lanes: Mapping[str, LaneSample], now: float) -> None:
        for name, lane in lanes.items():
            rejecting = lane.rejected > self.last_rejected.get(name, lane.rejected)
            self.last_rejected[name] = lane.rejected
            if lane.full or rejecting:
                self.saturated_since.setdefault(name, now)
            else:
                self.saturated_since.pop(name, None)
        for gone in set(self.saturated_since) - set(lanes):
            del self.saturated_since[gone]
        for gone in set(self.last_rejected) - set(lanes):
            del self.last_rejected[gone]

    def verdict(self, now: float, window: float) -> Verdict:
        long = sorted(
            (name, now - since)
            for name, since in self.saturated_since.items()
            if now - since >= window
        )
        if long:
            listed = ", ".join(f"lane {name} saturated for {age:.0f} s" for name, age in long)
            return Verdict(Level.DEGRADED, f"{listed} (queue full or refusing callers)")
        return Verdict(Level.HEALTHY, "no lane saturated")


# -- the snapshot ----------------------------------------------------------------------------


@attrs.frozen
class HealthSnapshot:
    """What the health actor publishes after each evaluation (immutable).

    ``state``: the worst check. ``at``: when it was evaluated (trio time): a snapshot much older
    than the monitor's interval means the monitor itself is stuck. ``stuck``: undamped, what
    a restart would fix (actors stopped or not answering, ``writer`` when it stalled).
    """

    state: Level
    checks: tuple[CheckStatus, ...]
    at: float
    stuck: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """``name: reason`` of each check that is not healthy, worst first."""
        bad = sorted((c for c in self.checks if c.level), key=lambda c: (-c.level, c.name))
        return [f"{c.name}: {c.reason}" for c in bad]

    def summary(self) -> str:
        """One line for systemd's ``STATUS=``: the state and the first problem."""
        problems = self.problems()
        if not problems:
            return self.state.word
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{self.state.word}: {problems[0]}{more}"

    def to_wire(self, now: float, wall_now: float) -> dict[str, Any]:
        """``status``'s ``checks`` section: each check by name, and when this was evaluated."""
        return {
            "state": self.state.word,
            "evaluated_s_ago": round(max(0.0, now - self.at), 3),
            "checks": {c.name: c.to_wire(now, wall_now) for c in self.checks},
            "stuck": list(self.stuck),
        }
