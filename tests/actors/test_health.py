"""The health monitor actor on trio's MockClock (autojump), with every input driven by the test:
each check drives the state it should, transitions are logged once, flapping is damped, a
silent actor and a stalled writer are named as stuck, probes and credentials are learned."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import structlog
import trio

from claykiln.actors.health import HealthMonitor
from claykiln.actors.health_checks import WRITER_STALLED, LaneSample, Level
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

POLICY = HealthPolicy(interval=1.0, hold=10.0, window=5.0, min_failures=2, lane_window=5.0)
HEALTH_EVENTS = ("health.",)


@attrs.define
class World:
    """Everything the monitor reads, as the test sets it."""

    states: dict[str, str] = attrs.Factory(lambda: {"writer": "running", "gate": "running"})
    storage: StorageReading = attrs.Factory(lambda: StorageReading(10, 1000))
    writer: WriterReading = attrs.Factory(lambda: WriterReading(0, 0, 0))
    breakers: dict[str, str] = attrs.Factory(lambda: {"clay": "closed"})
    dead: int = 0
    lanes: dict[str, LaneSample] = attrs.Factory(dict)
    traffic: dict[str, UpstreamTraffic] = attrs.Factory(
        lambda: {"clay": UpstreamTraffic(0, 0), "hook": UpstreamTraffic(0, 0)}
    )
    answering: dict[str, bool] = attrs.Factory(lambda: {"gate": True})
    probes: list[str] = attrs.Factory(list)
    probe_answer: ProbeResult = attrs.Factory(lambda: ProbeResult(True, status=200))
    credentials: dict[str, str | None] = attrs.Factory(lambda: {"api-key": "v1"})
    settings: HealthSettings = attrs.Factory(
        lambda: HealthSettings(
            policy=POLICY,
            upstreams={"clay": UpstreamWatch(critical=True), "hook": UpstreamWatch()},
            credentials={"me": ("api-key", "clay")},
            credentials_dir="/creds",
            dlq_degraded=10,
        )
    )

    def fail(self, upstream: str, n: int = 1) -> None:
        t = self.traffic[upstream]
        self.traffic[upstream] = UpstreamTraffic(t.answers, t.failures + n)

    def answer(self, upstream: str, n: int = 1) -> None:
        t = self.traffic[upstream]
        self.traffic[upstream] = UpstreamTraffic(t.answers + n, t.failures)

    def inputs(self) -> HealthInputs:
        async def ping_of(name: str) -> None:
            while not self.answering[name]:
                await trio.sleep(0.5)

        def pingables() -> Mapping[str, Callable[[], Awaitable[None]]]:
            return {name: (lambda n=name: ping_of(n)) for name in self.answering}

        async def probe(operation: str) -> ProbeResult:
            self.probes.append(operation)
            await trio.sleep(0.1)
            return self.probe_answer

        return HealthInputs(
            actors=lambda: dict(self.states),
            pingables=pingables,
            storage=lambda: self.storage,
            writer=lambda: self.writer,
            breakers=lambda: dict(self.breakers),
            dead_jobs=lambda: self.dead,
            lanes=lambda: dict(self.lanes),
            traffic=lambda: dict(self.traffic),
            probe=probe,
            credential=lambda name: self.credentials.get(name),
        )


@asynccontextmanager
async def running(world: World) -> AsyncIterator[HealthMonitor]:
    monitor = HealthMonitor(world.inputs(), lambda: world.settings, wall_clock=lambda: 1e9)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        yield monitor
        nursery.cancel_scope.cancel()


def events(logs: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(event, check) of every health line, in order."""
    return [
        (line["event"], line.get("check"))
        for line in logs
        if line["event"].startswith(HEALTH_EVENTS)
    ]


async def test_all_checks_healthy_at_start_and_nothing_logged(autojump_clock: Any) -> None:
    """A calm daemon: every check is published healthy at once and no alert is logged."""
    with structlog.testing.capture_logs() as logs:
        async with running(World()) as monitor:
            await trio.sleep(3)
            snapshot = monitor.snapshot
    assert snapshot.state is Level.HEALTHY
    assert {c.name for c in snapshot.checks} == {
        "actors",
        "storage",
        "breakers",
        "dead_letters",
        "lanes",
        "credentials",
        "upstream.clay",
        "upstream.hook",
    }
    assert events(logs) == []


async def test_forced_open_breaker_degrades_once_and_clears_after_hold(
    autojump_clock: Any,
) -> None:
    """A breaker forced open: one check alert and one overall alert, none repeated while it
    lasts; reset, the all-clears come once the closed reading held for ``hold``."""
    world = World()
    with structlog.testing.capture_logs() as logs:
        async with running(world) as monitor:
            world.breakers["clay"] = "forced_open"
            await trio.sleep(20)
            assert monitor.snapshot.state is Level.DEGRADED
            world.breakers["clay"] = "closed"
            await trio.sleep(5)
            assert monitor.snapshot.state is Level.DEGRADED  # within hold
            await trio.sleep(10)
            assert monitor.snapshot.state is Level.HEALTHY
    assert events(logs) == [
        ("health.check_degraded", "breakers"),
        ("health.degraded", None),
        ("health.check_healthy", "breakers"),
        ("health.healthy", None),
    ]
    degraded = next(line for line in logs if line["event"] == "health.check_degraded")
    assert degraded["reason"] == "breaker clay is forced_open"
    assert degraded["alert"] is True and degraded["severity"] == "warning"
    healthy = next(line for line in logs if line["event"] == "health.check_healthy")
    assert healthy["cleared"] == "breaker clay is forced_open" and healthy["severity"] == "info"


async def test_damping_holds_under_a_flapping_upstream(autojump_clock: Any) -> None:
    """An upstream down 4 s, up 4 s, for 80 s (window 2 s, hold 10 s): one alert when it goes
    down, one all-clear once it stayed up for hold, whatever the flaps in between."""
    world = World()
    world.settings = attrs.evolve(world.settings, policy=attrs.evolve(POLICY, window=2.0))
    with structlog.testing.capture_logs() as logs:
        async with running(world) as monitor:
            for _ in range(10):
                for _ in range(4):  # down: connect failures, no answer
                    world.fail("hook", 2)
                    await trio.sleep(1)
                for _ in range(4):  # up: answers
                    world.answer("hook", 5)
                    await trio.sleep(1)
            assert monitor.snapshot.state is Level.DEGRADED
            for _ in range(20):  # stays up
                world.answer("hook")
                await trio.sleep(1)
            assert monitor.snapshot.state is Level.HEALTHY
    assert [e for e in events(logs) if e[1] in ("upstream.hook", None)] == [
        ("health.check_degraded", "upstream.hook"),
        ("health.degraded", None),
        ("health.check_healthy", "upstream.hook"),
        ("health.healthy", None),
    ]


async def test_a_critical_upstream_unreachable_is_unhealthy(autojump_clock: Any) -> None:
    """Connect failures with no answer on a critical upstream make the daemon unhealthy; on
    another one only degraded."""
    world = World()
    with structlog.testing.capture_logs() as logs:
        async with running(world) as monitor:
            world.fail("clay", 3)
            await trio.sleep(1.5)
            check = next(c for c in monitor.snapshot.checks if c.name == "upstream.clay")
            assert check.level is Level.UNHEALTHY and check.reason.startswith("unreachable")
            assert monitor.snapshot.state is Level.UNHEALTHY
    unhealthy = next(line for line in logs if line["event"] == "health.unhealthy")
    assert unhealthy["severity"] == "critical" and unhealthy["log_level"] == "critical"
    assert unhealthy["problems"][0].startswith("upstream.clay: unreachable")


async def test_storage_usage_failures_and_a_stalled_writer(autojump_clock: Any) -> None:
    """80 % full degrades, 96 % is unhealthy; a writer with writes queued and no commit for
    writer_stall is unhealthy and named stuck for the watchdog."""
    world = World()
    async with running(world) as monitor:
        world.storage = StorageReading(850, 1000)
        await trio.sleep(1.5)
        assert monitor.snapshot.state is Level.DEGRADED
        world.storage = StorageReading(960, 1000, disk_bound=True)
        await trio.sleep(1)
        assert monitor.snapshot.state is Level.UNHEALTHY
        world.storage = StorageReading(10, 1000)
        world.writer = WriterReading(transactions=5, failed=0, queued=3)
        await trio.sleep(31)
        assert WRITER_STALLED in monitor.snapshot.stuck
        storage = next(c for c in monitor.snapshot.checks if c.name == "storage")
        assert "committed nothing" in storage.reason and storage.level is Level.UNHEALTHY
        world.writer = WriterReading(transactions=6, failed=2, queued=0)
        await trio.sleep(1)
        assert monitor.snapshot.stuck == ()
        storage = next(c for c in monitor.snapshot.checks if c.name == "storage")
        assert "2 storage write(s) failed" in storage.reason


async def test_an_actor_silent_to_its_liveness_ask_is_unhealthy_and_stuck(
    autojump_clock: Any,
) -> None:
    """An actor that stops answering its liveness ask: unhealthy after liveness_timeout and
    named stuck; once it answers again, no longer stuck."""
    world = World()
    with structlog.testing.capture_logs() as logs:
        async with running(world) as monitor:
            world.answering["gate"] = False
            await trio.sleep(5)
            assert monitor.snapshot.state is Level.HEALTHY  # not silent for 10 s yet
            await trio.sleep(7)
            assert monitor.snapshot.state is Level.UNHEALTHY
            assert monitor.snapshot.stuck == ("gate",)
            world.answering["gate"] = True
            await trio.sleep(2)
            assert monitor.snapshot.stuck == ()
    line = next(line for line in logs if line["event"] == "health.check_unhealthy")
    assert line["check"] == "actors"
    assert "actor gate has not answered a liveness ask" in line["reason"]


async def test_a_stopped_actor_is_unhealthy(autojump_clock: Any) -> None:
    """An actor the roster reports stopped makes the daemon unhealthy at the next reading."""
    world = World()
    async with running(world) as monitor:
        world.states["writer"] = "stopped"
        await trio.sleep(1.5)
        assert monitor.snapshot.state is Level.UNHEALTHY
        assert monitor.snapshot.stuck == ("writer",)


async def test_a_lane_saturated_for_the_window_degrades(autojump_clock: Any) -> None:
    """A lane with its queue full for lane_window degrades; a shorter burst does not."""
    world = World()
    async with running(world) as monitor:
        world.lanes["bulk"] = LaneSample(full=True, rejected=0)
        await trio.sleep(3)
        assert monitor.snapshot.state is Level.HEALTHY
        await trio.sleep(4.5)
        lanes = next(c for c in monitor.snapshot.checks if c.name == "lanes")
        assert lanes.level is Level.DEGRADED and "lane bulk saturated" in lanes.reason


async def test_dead_letters_over_the_threshold_degrade_and_a_reload_applies(
    autojump_clock: Any,
) -> None:
    """More dead jobs than dlq_degraded degrades; new settings (a reload) apply at the next
    reading, and the all-clear follows after hold."""
    world = World()
    async with running(world) as monitor:
        world.dead = 11
        await trio.sleep(1.5)
        assert monitor.snapshot.state is Level.DEGRADED
        world.settings = attrs.evolve(world.settings, dlq_degraded=50)
        await trio.sleep(11)
        assert monitor.snapshot.state is Level.HEALTHY


async def test_a_refused_credential_degrades_naming_the_file_until_accepted(
    autojump_clock: Any,
) -> None:
    """A 401 on an operation with a credential degrades the credentials check, naming the
    file; the operation becomes a suspect; an accepted answer clears it after hold."""
    world = World()
    async with running(world) as monitor:
        monitor.auth_answered("unknown-op", 401)  # sends no credential: not a credential problem
        monitor.auth_answered("me", 401)
        await trio.sleep(1.5)
        check = next(c for c in monitor.snapshot.checks if c.name == "credentials")
        assert check.level is Level.DEGRADED
        assert check.reason == (
            "credential api-key (/creds/api-key) rejected: clay answered 401 to me"
        )
        assert monitor.suspects == {"me"}
        monitor.auth_answered("me", 200)
        await trio.sleep(11)
        assert monitor.suspects == set()
        assert monitor.snapshot.state is Level.HEALTHY


async def test_a_replaced_credential_clears_the_rejection(autojump_clock: Any) -> None:
    """A credential whose value changed since it was refused (a reload) is judged afresh."""
    world = World()
    world.credentials["api-key"] = None  # missing: the call went without it
    async with running(world) as monitor:
        monitor.auth_answered("me", 403)
        await trio.sleep(1.5)
        check = next(c for c in monitor.snapshot.checks if c.name == "credentials")
        assert "the file is missing" in check.reason
        world.credentials["api-key"] = "v2"
        await trio.sleep(1)
        assert monitor.suspects == set()


async def test_probes_run_every_period_one_at_a_time(autojump_clock: Any) -> None:
    """An upstream with a probe is probed every ``every`` seconds; the last result is part of
    the reachability reason; a failing probe does not overlap the next."""
    world = World()
    world.settings = attrs.evolve(
        world.settings,
        upstreams={"clay": UpstreamWatch(critical=True, probe_operation="me", probe_every=5.0)},
    )
    async with running(world) as monitor:
        await trio.sleep(12)
        assert world.probes == ["me", "me"]
        check = next(c for c in monitor.snapshot.checks if c.name == "upstream.clay")
        assert check.reason.endswith("last probe: answered 200")
        world.probe_answer = ProbeResult(False, error="could not connect")
        await trio.sleep(5)
        check = next(c for c in monitor.snapshot.checks if c.name == "upstream.clay")
        assert check.reason.endswith("last probe: failed (could not connect)")
