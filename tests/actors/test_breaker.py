"""The breaker actor (BreakerBoard) on trio's autojump clock, with in-memory persistence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import structlog
import trio
import trio.testing

from claykiln.actors.breaker import BreakerBoard, BreakerPolicy, BreakerState, Outcome, Ticket
from claykiln.actors.errors import BadRequestRefusal, BreakerOpenRefusal
from claykiln.actors.mailbox import ActorStopped

KEY = "clay"
# The window-only breaker with a fixed 30 s open interval; the in-a-row signals and the growing
# interval are pinned in test_breaker_signals.py.
FIXED: dict[str, Any] = {
    "consecutive_failures": 0,
    "consecutive_connect_failures": 0,
    "reset_backoff": 1.0,
    "reset_jitter": 0.0,
}
POLICY = BreakerPolicy(**FIXED, volume_threshold=4, reset_timeout=30.0, probe_timeout=10.0)
TIMEOUT = 3600.0  # virtual seconds: a hang fails the test instead of stalling it


class MemoryStore:
    """persist/load backed by a dict; remembers every persisted record in order."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[str, dict[str, Any]]] = []

    def persist(self, key: str, record: dict[str, Any]) -> None:
        msgpack.packb(record)  # what the storage writer will do with it
        self.records[key] = dict(record)
        self.history.append((key, dict(record)))

    def load(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)


class WallClock:
    """A settable wall clock for restart tests."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_board(
    store: MemoryStore,
    policies: dict[str, BreakerPolicy] | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> BreakerBoard:
    return BreakerBoard(
        {KEY: POLICY} if policies is None else policies,
        BreakerPolicy(),
        persist=store.persist,
        load=store.load,
        wall_clock=wall_clock or WallClock(),
    )


@asynccontextmanager
async def running(board: BreakerBoard) -> AsyncIterator[BreakerBoard]:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(board.run)
            yield board
            nursery.cancel_scope.cancel()


async def settle() -> None:
    """Let the actor drain everything sent so far (fire-and-forget records included)."""
    await trio.testing.wait_all_tasks_blocked()


async def trip(board: BreakerBoard, key: str = KEY) -> None:
    for _ in range(4):
        board.record(await board.acquire(key), Outcome.FAILURE, 0.01)
    await settle()
    assert board.snapshot[key].state is BreakerState.OPEN


def state(board: BreakerBoard, key: str = KEY) -> BreakerState:
    return board.snapshot[key].state


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


async def test_opens_at_the_threshold_and_alerts(store: MemoryStore, autojump_clock: Any) -> None:
    """Four calls with 50 % failures open the breaker, persist it and log an alert."""
    with structlog.testing.capture_logs() as logs:
        async with running(make_board(store)) as board:
            for outcome in (Outcome.SUCCESS, Outcome.FAILURE, Outcome.SUCCESS):
                board.record(await board.acquire(KEY), outcome, 0.01)
            await settle()
            assert state(board) is BreakerState.CLOSED
            assert board.snapshot[KEY].calls == 3
            board.record(await board.acquire(KEY), Outcome.FAILURE, 0.01)
            await settle()
            assert state(board) is BreakerState.OPEN
    opened = [e for e in logs if e["event"] == "breaker.opened"]
    assert len(opened) == 1
    assert opened[0]["alert"] is True
    assert opened[0]["severity"] == "warning"
    assert (opened[0]["key"], opened[0]["calls"], opened[0]["error_rate"]) == (KEY, 4, 0.5)
    assert store.records[KEY]["state"] == "open"


async def test_fails_fast_while_open_without_asking(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """While open, acquire raises BreakerOpenRefusal with the time to half-open, from the snapshot."""
    async with running(make_board(store)) as board:
        await trip(board)
        await trio.sleep(12.0)
        asks = board.stats()["asks"]
        with pytest.raises(BreakerOpenRefusal):
            board.check(KEY)  # the pipeline's pre-flight refusal, same rule
        with pytest.raises(BreakerOpenRefusal) as caught:
            board.acquire_nowait(KEY)  # synchronous: it cannot have asked the actor
        with pytest.raises(BreakerOpenRefusal) as caught_async:
            await board.acquire(KEY)
        assert board.stats()["asks"] == asks
        for error in (caught.value, caught_async.value):
            assert error.retry_after == pytest.approx(18.0)
            assert error.details == {"breaker": KEY, "state": "open"}
            assert error.to_wire()["code"] == "breaker_open"


async def test_goes_half_open_on_its_own_at_reset_timeout(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """With no traffic at all, the breaker turns half-open at reset_timeout and persists it."""
    with structlog.testing.capture_logs() as logs:
        async with running(make_board(store)) as board:
            await trip(board)
            await trio.sleep(29.0)
            assert state(board) is BreakerState.OPEN
            await trio.sleep(1.5)
            assert state(board) is BreakerState.HALF_OPEN
    assert any(e["event"] == "breaker.half_open" for e in logs)
    assert store.records[KEY]["state"] == "half_open"


async def test_half_open_lets_exactly_n_concurrent_probes_through(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """With two probe slots, of three concurrent callers two get probes and one is refused."""
    policy = BreakerPolicy(**FIXED, volume_threshold=4, half_open_probes=2, probe_timeout=10.0)
    async with running(make_board(store, {KEY: policy})) as board:
        await trip(board)
        await trio.sleep(30.0)
        results: list[Ticket | BreakerOpenRefusal] = []

        async def caller() -> None:
            try:
                results.append(await board.acquire(KEY))
            except BreakerOpenRefusal as exc:
                results.append(exc)

        async with trio.open_nursery() as callers:
            for _ in range(3):
                callers.start_soon(caller)
        tickets = [r for r in results if isinstance(r, Ticket)]
        refused = [r for r in results if isinstance(r, BreakerOpenRefusal)]
        assert len(tickets) == 2 and all(t.probe for t in tickets)
        assert len(refused) == 1
        assert refused[0].details == {"breaker": KEY, "state": "half_open"}
        assert refused[0].retry_after == pytest.approx(10.0)  # until the probes time out
        await settle()
        assert board.snapshot[KEY].probes_in_flight == 2
        with pytest.raises(BreakerOpenRefusal):
            board.acquire_nowait(KEY)  # the snapshot knows the round is full


async def test_closes_when_the_probes_succeed(store: MemoryStore, autojump_clock: Any) -> None:
    """Successful probes close the breaker with a fresh window; callers pass without asking."""
    policy = BreakerPolicy(**FIXED, volume_threshold=4, half_open_probes=2)
    with structlog.testing.capture_logs() as logs:
        async with running(make_board(store, {KEY: policy})) as board:
            await trip(board)
            await trio.sleep(30.0)
            probes = [await board.acquire(KEY), await board.acquire(KEY)]
            for probe in probes:
                board.record(probe, Outcome.SUCCESS, 0.2)
            await settle()
            view = board.snapshot[KEY]
            assert (view.state, view.calls, view.failures) == (BreakerState.CLOSED, 0, 0)
            board.check(KEY)  # no refusal
            ticket = board.acquire_nowait(KEY)
            assert ticket is not None and not ticket.probe
    assert any(e["event"] == "breaker.closed" for e in logs)
    assert store.records[KEY]["state"] == "closed"


async def test_reopens_when_a_probe_fails(store: MemoryStore, autojump_clock: Any) -> None:
    """A failed probe opens the breaker again for a whole reset_timeout."""
    async with running(make_board(store)) as board:
        await trip(board)
        await trio.sleep(30.0)
        board.record(await board.acquire(KEY), Outcome.FAILURE, 0.2)
        await settle()
        assert state(board) is BreakerState.OPEN
        with pytest.raises(BreakerOpenRefusal) as caught:
            board.acquire_nowait(KEY)
        assert caught.value.retry_after == pytest.approx(30.0)


async def test_a_hung_probe_reopens_after_probe_timeout(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """A probe never reported counts as failed at probe_timeout; half-open cannot wedge."""
    async with running(make_board(store)) as board:
        await trip(board)
        await trio.sleep(30.0)
        hung = await board.acquire(KEY)
        await trio.sleep(9.5)
        assert state(board) is BreakerState.HALF_OPEN
        await trio.sleep(1.0)
        assert state(board) is BreakerState.OPEN
        await trio.sleep(30.0)
        assert state(board) is BreakerState.HALF_OPEN
        board.record(hung, Outcome.SUCCESS, 0.1)  # far too late: stale
        await settle()
        assert state(board) is BreakerState.HALF_OPEN
        assert board.stats()["records_stale"] == 1
        assert (await board.acquire(KEY)).probe


async def test_a_cancelled_probe_asker_takes_no_slot(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """A caller cancelled while its probe ask waits in the inbox leaves the slot free."""
    store.records[KEY] = {"v": 1, "state": "half_open", "forced": False}
    board = make_board(store)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(board.acquire, KEY)  # queued: the actor is not running yet
            await settle()
            nursery.cancel_scope.cancel()  # the asker gives up while its ask waits
        async with running(board):
            await settle()
            assert board.snapshot[KEY].probes_in_flight == 0
            assert (await board.acquire(KEY)).probe


async def test_forced_open_refuses_until_reset(store: MemoryStore, autojump_clock: Any) -> None:
    """forced open refuses with no retry time, outlasts reset_timeout, and reset closes it."""
    with structlog.testing.capture_logs() as logs:
        async with running(make_board(store)) as board:
            view = await board.force(KEY, "open")
            assert view.state is BreakerState.FORCED_OPEN
            assert board.views()[0]["state"] == "forced_open"  # published before the reply
            await trio.sleep(600.0)
            with pytest.raises(BreakerOpenRefusal) as caught:
                await board.acquire(KEY)
            assert caught.value.retry_after is None
            assert caught.value.details == {"breaker": KEY, "state": "forced_open"}
            view = await board.force(KEY, "reset")
            assert view.state is BreakerState.CLOSED
            assert not (await board.acquire(KEY)).probe
    forced = [e for e in logs if e["event"] == "breaker.forced"]
    assert [e["state"] for e in forced] == ["forced_open", "closed"]
    assert store.records[KEY]["forced"] is False


async def test_forced_closed_counts_but_never_opens(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """forced closed admits every call and keeps the figures, whatever the failures."""
    async with running(make_board(store)) as board:
        await board.force(KEY, "closed")
        for _ in range(10):
            board.record(await board.acquire(KEY), Outcome.FAILURE, 0.01)
        await settle()
        view = board.snapshot[KEY]
        assert (view.state, view.calls, view.failures) == (BreakerState.FORCED_CLOSED, 10, 10)


async def test_disabled_counts_nothing(store: MemoryStore, autojump_clock: Any) -> None:
    """disabled admits every call and sends the actor nothing for it."""
    async with running(make_board(store)) as board:
        await board.force(KEY, "disabled")
        for _ in range(10):
            ticket = await board.acquire(KEY)
            assert ticket.counted is False
            board.record(ticket, Outcome.FAILURE, 0.01)
        await settle()
        view = board.snapshot[KEY]
        assert (view.state, view.calls) == (BreakerState.DISABLED, 0)


async def test_force_with_an_unknown_state_is_a_bad_request(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """breaker.force with a state outside open/closed/disabled/reset raises BadRequestRefusal."""
    async with running(make_board(store)) as board:
        with pytest.raises(BadRequestRefusal):
            await board.force(KEY, "ajar")  # type: ignore[arg-type]


async def test_open_state_survives_a_restart(store: MemoryStore, autojump_clock: Any) -> None:
    """Restarted 5 s after a trip, the breaker is still open with 25 s to go."""
    wall = WallClock()
    async with running(make_board(store, wall_clock=wall)) as board:
        await trip(board)
    wall.now += 5.0
    async with running(make_board(store, wall_clock=wall)) as board:
        assert state(board) is BreakerState.OPEN
        with pytest.raises(BreakerOpenRefusal) as caught:
            board.acquire_nowait(KEY)
        assert caught.value.retry_after == pytest.approx(25.0)
        [wire] = board.views()
        assert wire["open_until"] == pytest.approx(wall.now + 25.0)


async def test_open_state_whose_reset_passed_during_downtime_comes_up_half_open(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """Restarted after reset_timeout has passed, the breaker starts half-open (one probe)."""
    wall = WallClock()
    async with running(make_board(store, wall_clock=wall)) as board:
        await trip(board)
    wall.now += 45.0
    async with running(make_board(store, wall_clock=wall)) as board:
        assert state(board) is BreakerState.HALF_OPEN
        assert store.records[KEY]["state"] == "half_open"
        assert (await board.acquire(KEY)).probe
        with pytest.raises(BreakerOpenRefusal):
            await board.acquire(KEY)


async def test_forced_state_survives_a_restart(store: MemoryStore, autojump_clock: Any) -> None:
    """A forced state comes back forced after a restart, however long the downtime."""
    wall = WallClock()
    async with running(make_board(store, wall_clock=wall)) as board:
        await board.force(KEY, "open")
    wall.now += 86_400.0
    async with running(make_board(store, wall_clock=wall)) as board:
        assert state(board) is BreakerState.FORCED_OPEN


async def test_a_malformed_record_starts_closed(store: MemoryStore, autojump_clock: Any) -> None:
    """A persisted record that makes no sense is logged and the breaker starts closed."""
    store.records[KEY] = {"state": "molten"}
    with structlog.testing.capture_logs() as logs:
        async with running(make_board(store)) as board:
            assert state(board) is BreakerState.CLOSED
    assert any(e["event"] == "breaker.restore_failed" for e in logs)


async def test_a_failing_persist_is_logged_and_the_breaker_goes_on(
    autojump_clock: Any,
) -> None:
    """If persist raises, the transition still happens, an alert is logged and counted."""

    def broken(key: str, record: dict[str, Any]) -> None:
        raise OSError("disk on fire")

    board = BreakerBoard({KEY: POLICY}, BreakerPolicy(), persist=broken, load=lambda key: None)
    with structlog.testing.capture_logs() as logs:
        async with running(board):
            await trip(board)
            assert board.stats()["persist_failures"] == 1
    [failed] = [e for e in logs if e["event"] == "breaker.persist_failed"]
    assert failed["alert"] is True


async def test_reconfigure_keeps_states_and_applies_new_thresholds(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """After reconfigure, open breakers stay open, counts stay, and new thresholds apply."""
    lax = BreakerPolicy(**FIXED, volume_threshold=100)
    async with running(make_board(store, {KEY: POLICY, "slack": lax})) as board:
        await trip(board)
        for _ in range(5):
            board.record(await board.acquire("slack"), Outcome.FAILURE, 0.01)
        await settle()
        assert state(board, "slack") is BreakerState.CLOSED
        board.reconfigure(
            {KEY: POLICY, "slack": BreakerPolicy(**FIXED, volume_threshold=6), "new": POLICY},
            BreakerPolicy(),
        )
        await settle()
        assert state(board) is BreakerState.OPEN
        assert state(board, "new") is BreakerState.CLOSED  # a configured key shows up at once
        board.record(await board.acquire("slack"), Outcome.FAILURE, 0.01)
        await settle()
        assert state(board, "slack") is BreakerState.OPEN


async def test_operation_key_uses_its_upstream_policy_on_first_use(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """An unseen "upstream/operation" key is created by one ask, with the upstream's policy."""
    async with running(make_board(store)) as board:
        assert "clay/push" not in board.snapshot
        asks = board.stats()["asks"]
        first = await board.acquire("clay/push")
        assert board.stats()["asks"] == asks + 1
        board.record(first, Outcome.FAILURE, 0.01)
        for _ in range(3):
            board.record(await board.acquire("clay/push"), Outcome.FAILURE, 0.01)
        assert board.stats()["asks"] == asks + 1
        await settle()
        assert state(board, "clay/push") is BreakerState.OPEN  # volume 4, from "clay"
        assert state(board) is BreakerState.CLOSED


async def test_slow_calls_open_the_breaker(store: MemoryStore, autojump_clock: Any) -> None:
    """Durations reported with outcomes drive the slow-call threshold."""
    policy = BreakerPolicy(
        **FIXED, volume_threshold=4, slow_call_duration=1.0, slow_call_threshold=0.5
    )
    async with running(make_board(store, {KEY: policy})) as board:
        for duration in (0.1, 0.1, 2.0, 3.0):
            board.record(await board.acquire(KEY), Outcome.SUCCESS, duration)
        await settle()
        assert state(board) is BreakerState.OPEN


async def test_asks_to_a_stopped_actor_raise_at_once(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """After the actor stops, asks raise ActorStopped, records are dropped, run() refuses."""
    async with running(make_board(store)) as board:
        ticket = await board.acquire(KEY)
    with pytest.raises(ActorStopped):
        await board.force(KEY, "open")
    with pytest.raises(ActorStopped):
        await board.acquire("never-seen")
    board.record(ticket, Outcome.FAILURE, 0.01)
    stats = board.stats()
    assert stats["records_dropped"] == 1
    assert stats["running"] is False
    with pytest.raises(RuntimeError, match="already started"):
        await board.run()


async def test_asks_pending_when_the_actor_stops_fail(
    store: MemoryStore, autojump_clock: Any
) -> None:
    """An ask still queued when the actor is cancelled fails with ActorStopped, never hangs."""
    board = make_board(store)
    outcome: list[BaseException] = []

    async def asker() -> None:
        try:
            await board.force(KEY, "open")
        except ActorStopped as exc:
            outcome.append(exc)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker)
            await settle()
            with trio.CancelScope() as actor_scope:
                actor_scope.cancel()
                await board.run()
    assert len(outcome) == 1


async def test_views_and_stats_are_msgpack_able(store: MemoryStore, autojump_clock: Any) -> None:
    """breaker.list and status payloads pack with msgpack and name every breaker."""
    async with running(make_board(store, {KEY: POLICY, "other": POLICY})) as board:
        await trip(board)
        views = board.views()
        stats = board.stats()
        msgpack.packb(views)
        msgpack.packb(stats)
        assert [v["key"] for v in views] == ["clay", "other"]
        assert views[0]["state"] == "open" and views[0]["retry_after"] == pytest.approx(30.0)
        assert stats["breakers"] == {"clay": "open", "other": "closed"}
        assert stats["open"] == 1
