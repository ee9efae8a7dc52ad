"""The health monitor actor: one check per input, a published snapshot, one alert per change.

Card
- owns: one ``Damper`` per check (health_checks.py), the samples its windows need (upstream
  traffic, failed writes, lane saturation, the writer's progress), the credentials upstreams
  refused, the liveness asks and probes in flight, and the published ``snapshot``.
- checks (docs/alerting.md, "Health", is the operator's version):
  ``actors`` (an actor stopped, or silent to a liveness ask for ``liveness_timeout``:
  unhealthy), ``storage`` (over ``storage_degraded`` of its ceiling: degraded; over
  ``storage_unhealthy``, writes failing, or the writer stalled: unhealthy), ``breakers`` (one
  refusing calls: degraded), ``dead_letters`` (more than ``dlq_degraded`` dead jobs: degraded),
  ``lanes`` (one saturated for ``lane_window``: degraded), ``credentials`` (refused by an
  upstream: degraded, naming the file) and ``upstream.NAME`` per upstream (unreachable:
  unhealthy when ``critical``, else degraded; passive from the pool's counters, plus an active
  probe every ``probe.every`` when the upstream names one).
- receives: ``_AuthAnswer`` (told by the call path, see ``auth_answered``), ``_Pinged`` and
  ``_Probed`` (told by its own liveness-ask and probe tasks).
- every ``interval``: reads its inputs (snapshots and counters, no asks), damps each reading,
  publishes a new ``HealthSnapshot``, logs each change of a check
  (``health.check_unhealthy`` / ``health.check_degraded`` / ``health.check_healthy``) and of the
  overall state (``health.unhealthy`` / ``health.degraded`` / ``health.healthy``) once, as
  alerts with the reason; starts the liveness asks and probes that are due.
- on cancellation: its nursery cancels the asks and probes in flight; the inbox closes.
- on failure: an input that raises is a bug; it propagates and the roster marks the actor
  stopped, which the watchdog reads as a stuck daemon (systemd restarts it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Set
from typing import Final

import attrs
import trio

from claykiln.actors.health_checks import (
    WRITER_STALLED,
    CheckStatus,
    Counted,
    CredentialRejection,
    Damper,
    HealthSnapshot,
    LaneSaturation,
    Level,
    Verdict,
    breakers_verdict,
    credentials_verdict,
    dead_letters_verdict,
    liveness_verdict,
    reachability_verdict,
    storage_verdict,
    worst,
)
from claykiln.actors.health_inputs import (
    HealthInputs,
    HealthPolicy,
    HealthSettings,
    ProbeResult,
    StorageReading,
    UpstreamTraffic,
    UpstreamWatch,
    WriterReading,
)
from claykiln.actors.log import alert, get_logger
from claykiln.actors.mailbox import ActorStopped, Mailbox

__all__ = [
    "HEALTH_INBOX",
    "HealthInputs",
    "HealthMonitor",
    "HealthPolicy",
    "HealthSettings",
    "StorageReading",
    "UpstreamTraffic",
    "UpstreamWatch",
    "WriterReading",
]

log = get_logger("claykiln.health")

HEALTH_INBOX: Final = 1024
NOT_CHECKED: Final = Verdict(Level.HEALTHY, "not checked yet")


@attrs.frozen(eq=False)
class _AuthAnswer:
    operation: str
    status: int


@attrs.frozen(eq=False)
class _Pinged:
    actor: str


@attrs.frozen(eq=False)
class _Probed:
    upstream: str
    result: ProbeResult


_Message = _AuthAnswer | _Pinged | _Probed


@attrs.define
class _HealthState:
    """Only the monitor's task touches this."""

    dampers: dict[str, Damper] = attrs.field(factory=dict)
    overall: Level = Level.HEALTHY
    pings: dict[str, float] = attrs.field(factory=dict)  # actor -> when its ask was sent
    probing: set[str] = attrs.field(factory=set)
    next_probe: dict[str, float] = attrs.field(factory=dict)
    last_probe: dict[str, str] = attrs.field(factory=dict)
    answers: dict[str, Counted] = attrs.field(factory=dict)
    failures: dict[str, Counted] = attrs.field(factory=dict)
    failed_writes: Counted = attrs.field(factory=Counted)
    last_transactions: int = -1
    last_progress: float = 0.0
    writer_stalled: bool = False
    lanes: LaneSaturation = attrs.field(factory=LaneSaturation)
    rejected: dict[str, tuple[CredentialRejection, str | None]] = attrs.field(factory=dict)
    suspects: frozenset[str] = frozenset()


class HealthMonitor:
    """The health actor; see the module card. ``snapshot`` is read without an ask."""

    def __init__(
        self,
        inputs: HealthInputs,
        settings: Callable[[], HealthSettings],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._inputs = inputs
        self._settings = settings
        self._wall_clock = wall_clock
        self._mailbox: Mailbox[_Message] = Mailbox("health", HEALTH_INBOX)
        self._state = _HealthState()
        self._snapshot = HealthSnapshot(Level.HEALTHY, (), 0.0)

    # -- read side (any task) --------------------------------------------------------------
    @property
    def snapshot(self) -> HealthSnapshot:
        """The latest evaluation (replaced wholesale; the actor is the only writer)."""
        return self._snapshot

    @property
    def suspects(self) -> Set[str]:
        """Operations whose credential an upstream refused last (``AuthWatch``)."""
        return self._state.suspects

    def auth_answered(self, operation: str, status: int) -> None:
        """The call path heard ``status`` for ``operation`` (a 401/403, or any answer to a
        suspect): fire-and-forget, never blocks."""
        self._mailbox.tell(_AuthAnswer(operation, status))

    def wire(self) -> dict[str, object]:
        """``status``'s ``health`` section (wall-clock ``since`` per check)."""
        return self._snapshot.to_wire(trio.current_time(), self._wall_clock())

    # -- the actor -------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Evaluate at once, then every ``interval`` until cancelled."""
        state = self._state
        try:
            async with trio.open_nursery() as tasks:
                now = trio.current_time()
                state.last_progress = now
                self._evaluate(tasks, now)
                task_status.started()
                next_at = now + self._settings().policy.interval
                while True:
                    with trio.move_on_at(next_at):
                        for message in await self._mailbox.drain():
                            self._handle(message)
                    now = trio.current_time()
                    if now >= next_at:
                        self._evaluate(tasks, now)
                        next_at = now + self._settings().policy.interval
        finally:
            self._mailbox.stop()

    def _handle(self, message: _Message) -> None:
        state = self._state
        if isinstance(message, _Pinged):
            state.pings.pop(message.actor, None)
        elif isinstance(message, _Probed):
            state.probing.discard(message.upstream)
            state.last_probe[message.upstream] = message.result.describe()
        else:
            self._learn_auth(message.operation, message.status)

    def _learn_auth(self, operation: str, status: int) -> None:
        settings = self._settings()
        found = settings.credentials.get(operation)
        if found is None:
            return  # an operation that sends no credential: not a credential problem
        credential, upstream = found
        state = self._state
        if status in (401, 403):
            fingerprint = self._inputs.credential(credential)
            rejection = CredentialRejection(
                credential=credential,
                path=f"{settings.credentials_dir}/{credential}",
                upstream=upstream,
                operation=operation,
                status=status,
                missing=fingerprint is None,
            )
            state.rejected[credential] = (rejection, fingerprint)
        else:
            state.rejected.pop(credential, None)
        self._update_suspects(settings)

    def _update_suspects(self, settings: HealthSettings) -> None:
        rejected = self._state.rejected
        self._state.suspects = frozenset(
            op for op, (credential, _) in settings.credentials.items() if credential in rejected
        )

    # -- evaluation ------------------------------------------------------------------------
    def _evaluate(self, tasks: trio.Nursery, now: float) -> None:
        settings = self._settings()
        readings = self._read(settings, now)
        self._publish(readings, settings.policy.hold, now)
        self._start_asks(tasks, now)
        self._start_probes(tasks, settings, now)

    def _read(self, settings: HealthSettings, now: float) -> dict[str, Verdict]:
        """One reading of every check, from the inputs as they are now."""
        policy, inputs, state = settings.policy, self._inputs, self._state
        states = inputs.actors()
        waiting = {name: now - sent for name, sent in state.pings.items()}
        readings = {"actors": liveness_verdict(states, waiting, policy.liveness_timeout)}
        readings["storage"] = self._storage(policy, now)
        readings["breakers"] = breakers_verdict(inputs.breakers())
        readings["dead_letters"] = dead_letters_verdict(inputs.dead_jobs(), settings.dlq_degraded)
        state.lanes.sample(inputs.lanes(), now)
        readings["lanes"] = state.lanes.verdict(now, policy.lane_window)
        for credential, (_, fingerprint) in list(state.rejected.items()):
            if inputs.credential(credential) != fingerprint:
                del state.rejected[credential]  # replaced (a reload): judged again by its use
        self._update_suspects(settings)
        readings["credentials"] = credentials_verdict(r for r, _ in state.rejected.values())
        traffic = inputs.traffic()
        for name, watch in sorted(settings.upstreams.items()):
            counters = traffic.get(name)
            if counters is None:
                continue
            answers = state.answers.setdefault(name, Counted())
            failures = state.failures.setdefault(name, Counted())
            answers.add(now, counters.answers, policy.window)
            failures.add(now, counters.failures, policy.window)
            readings[f"upstream.{name}"] = reachability_verdict(
                answers=answers.recent(),
                failures=failures.recent(),
                min_failures=policy.min_failures,
                critical=watch.critical,
                window=policy.window,
                probe=state.last_probe.get(name),
            )
        return readings

    def _storage(self, policy: HealthPolicy, now: float) -> Verdict:
        state = self._state
        reading = self._inputs.storage()
        writer = self._inputs.writer()
        state.failed_writes.add(now, writer.failed, policy.window)
        if writer.transactions != state.last_transactions or writer.queued == 0:
            state.last_transactions, state.last_progress = writer.transactions, now
        state.writer_stalled = now - state.last_progress >= policy.writer_stall
        return storage_verdict(
            used=reading.used,
            ceiling=reading.ceiling,
            disk_bound=reading.disk_bound,
            failed_writes=state.failed_writes.recent(),
            stalled_for=now - state.last_progress,
            queued=writer.queued,
            degraded_ratio=policy.storage_degraded,
            unhealthy_ratio=policy.storage_unhealthy,
            writer_stall=policy.writer_stall,
            window=policy.window,
        )

    def _publish(self, readings: Mapping[str, Verdict], hold: float, now: float) -> None:
        """Damp each reading, log what changed, publish the snapshot."""
        state = self._state
        for gone in set(state.dampers) - set(readings):
            del state.dampers[gone]  # an upstream a reload removed
        for name, reading in readings.items():
            damper = state.dampers.setdefault(name, Damper(NOT_CHECKED, now))
            previous = damper.observe(reading, now, hold)
            if previous is not None:
                _log_check(name, damper.published, previous)
        checks = tuple(
            CheckStatus(name, d.published.level, d.published.reason, d.since)
            for name, d in sorted(state.dampers.items())
        )
        overall = worst(c.level for c in checks)
        snapshot = HealthSnapshot(overall, checks, now, self._stuck(now))
        if overall != state.overall:
            _log_overall(overall, state.overall, snapshot.problems())
            state.overall = overall
        self._snapshot = snapshot

    def _stuck(self, now: float) -> tuple[str, ...]:
        """What a restart would fix, undamped: the watchdog withholds its ping for these."""
        policy = self._settings().policy
        stuck = sorted(name for name, s in self._inputs.actors().items() if s == "stopped")
        stuck += sorted(
            name
            for name, sent in self._state.pings.items()
            if now - sent >= policy.liveness_timeout and name not in stuck
        )
        if self._state.writer_stalled:
            stuck.append(WRITER_STALLED)
        return tuple(stuck)

    # -- liveness asks and probes ----------------------------------------------------------
    def _start_asks(self, tasks: trio.Nursery, now: float) -> None:
        for name, ping in self._inputs.pingables().items():
            if name not in self._state.pings:
                self._state.pings[name] = now
                tasks.start_soon(self._ask, name, ping)

    async def _ask(self, name: str, ping: Callable[[], Awaitable[None]]) -> None:
        try:
            await ping()
        except ActorStopped:
            pass  # the roster says it stopped; the ask is over either way
        await self._tell(_Pinged(name))

    def _start_probes(self, tasks: trio.Nursery, settings: HealthSettings, now: float) -> None:
        state = self._state
        for name, watch in settings.upstreams.items():
            if watch.probe_operation is None or watch.probe_every is None:
                continue
            due = state.next_probe.setdefault(name, now + watch.probe_every)
            if now >= due and name not in state.probing:
                state.probing.add(name)
                state.next_probe[name] = now + watch.probe_every
                tasks.start_soon(self._probe, name, watch.probe_operation)

    async def _probe(self, upstream: str, operation: str) -> None:
        result = await self._inputs.probe(operation)
        await self._tell(_Probed(upstream, result))

    async def _tell(self, message: _Message) -> None:
        try:
            await self._mailbox.post(message)
        except ActorStopped:
            pass


def _log_check(name: str, now: Verdict, previous: Verdict) -> None:
    was = previous.level.word
    if now.level is Level.UNHEALTHY:
        alert(
            log,
            "health.check_unhealthy",
            severity="critical",
            check=name,
            previous=was,
            reason=now.reason,
        )
    elif now.level is Level.DEGRADED:
        alert(
            log,
            "health.check_degraded",
            severity="warning",
            check=name,
            previous=was,
            reason=now.reason,
        )
    else:
        alert(
            log,
            "health.check_healthy",
            severity="info",
            check=name,
            previous=was,
            reason=now.reason,
            cleared=previous.reason,
        )


def _log_overall(now: Level, previous: Level, problems: list[str]) -> None:
    was = previous.word
    if now is Level.UNHEALTHY:
        alert(log, "health.unhealthy", severity="critical", previous=was, problems=problems)
    elif now is Level.DEGRADED:
        alert(log, "health.degraded", severity="warning", previous=was, problems=problems)
    else:
        alert(log, "health.healthy", severity="info", previous=was, problems=problems)
