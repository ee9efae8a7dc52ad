"""The rate gate actor: pacing, deadlines, Retry-After closures, persistence, fire-and-forget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from claykiln.actors.errors import RateLimitedRefusal
from claykiln.actors.gate import GATE_INBOX_SIZE, GateBoard, RatePolicy
from claykiln.actors.mailbox import ActorStopped

CLAY = {"clay": RatePolicy(per_second=10.0, burst=20, margin=0.0)}


class Records:
    """An in-memory stand-in for the storage table: persist/load by key."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def persist(self, key: str, record: dict[str, Any]) -> None:
        self.data[key] = dict(record)

    def load(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)


class WallClock:
    """A settable wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_gate(
    records: Records | None = None,
    policies: dict[str, RatePolicy] | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> GateBoard:
    records = records or Records()
    return GateBoard(
        CLAY if policies is None else policies,
        persist=records.persist,
        load=records.load,
        wall_clock=wall_clock or WallClock(1_000.0),
    )


async def test_hundred_callers_paced_after_burst(autojump_clock: trio.testing.MockClock) -> None:
    """100 concurrent acquires: `burst` pass at once, then one per 1/rate, never faster."""
    gate = make_gate()
    admitted: list[float] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            start = trio.current_time()

            async def caller() -> None:
                await gate.acquire("clay", None)
                admitted.append(trio.current_time() - start)

            async with trio.open_nursery() as callers:
                for _ in range(100):
                    callers.start_soon(caller)
            nursery.cancel_scope.cancel()
    assert len(admitted) == 100
    assert admitted[:20] == [0.0] * 20
    assert admitted[20:] == pytest.approx([0.1 * k for k in range(1, 81)])
    for i, t in enumerate(admitted):
        in_window = sum(1 for u in admitted[i:] if u < t + 1.0 - 1e-9)
        assert in_window <= (10 + 20 if t == 0.0 else 10)


async def test_short_deadline_rejected_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """A deadline the next token cannot meet raises RateLimitedRefusal(paced) at once with retry_after."""
    gate = make_gate(policies={"clay": RatePolicy(per_second=2.0, burst=1)})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            start = trio.current_time()
            await gate.acquire("clay", start + 1.0)
            with pytest.raises(RateLimitedRefusal) as info:
                await gate.acquire("clay", start + 0.2)
            assert trio.current_time() == start
            assert info.value.retry_after == pytest.approx(0.5)
            assert info.value.details == {"gate": "clay", "upstream": "clay", "reason": "paced"}
            await gate.acquire("clay", start + 0.5)
            assert trio.current_time() == pytest.approx(start + 0.5)
            assert gate.stats()["upstreams"]["clay"]["limited"] == 1
            nursery.cancel_scope.cancel()


async def test_closure_blocks_every_caller_until_it_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """close_until holds back every caller until the Retry-After passes, then they proceed paced."""
    gate = make_gate()
    admitted: list[float] = []
    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            start = trio.current_time()
            gate.close_until("clay", 5.0, "429")
            gate.close_until("clay", 3.0, "503")  # never shortens the closure
            await trio.testing.wait_all_tasks_blocked()
            clay = gate.stats()["upstreams"]["clay"]
            assert (clay["closed"], clay["closed_for"], clay["reason"]) == (True, 5.0, "429")

            async def caller() -> None:
                await gate.acquire("clay", None)
                admitted.append(trio.current_time() - start)

            async with trio.open_nursery() as callers:
                for _ in range(5):
                    callers.start_soon(caller)
            nursery.cancel_scope.cancel()
    assert admitted == pytest.approx([5.0, 5.1, 5.2, 5.3, 5.4])
    events = [(e["event"], e.get("severity")) for e in logs]
    assert ("gate.closed", "warning") in events
    assert ("gate.opened", "info") in events
    closed = next(e for e in logs if e["event"] == "gate.closed")
    assert closed["alert"] is True
    assert closed["retry_after"] == 5.0
    assert closed["reason"] == "429"


async def test_closure_short_deadline_rejected_with_reason_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """During a closure a deadline before the reopening gets RateLimitedRefusal(closed) at once."""
    gate = make_gate()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            start = trio.current_time()
            gate.close_until("clay", 30.0, "503")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RateLimitedRefusal) as info:
                await gate.acquire("clay", start + 10.0)
            assert trio.current_time() == start
            assert info.value.retry_after == pytest.approx(30.0)
            assert info.value.details == {"gate": "clay", "upstream": "clay", "reason": "closed"}
            nursery.cancel_scope.cancel()


async def test_closure_arriving_after_reservation_holds_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller already holding a token time re-checks the gate and waits for a new closure."""
    gate = make_gate(policies={"clay": RatePolicy(per_second=1.0, burst=1)})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            start = trio.current_time()
            await gate.acquire("clay", None)  # uses the single token
            done = trio.Event()

            async def caller() -> None:
                await gate.acquire("clay", None)  # reserved for start + 1
                done.set()

            nursery.start_soon(caller)
            await trio.sleep(0.5)
            gate.close_until("clay", 4.0, "429")  # until start + 4.5
            await done.wait()
            assert trio.current_time() == pytest.approx(start + 4.5)
            nursery.cancel_scope.cancel()


async def test_closure_clamped_to_max_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    """A Retry-After beyond the policy's max_retry_after closes only for max_retry_after."""
    records = Records()
    gate = make_gate(records, policies={"clay": RatePolicy(max_retry_after=60.0)})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            gate.close_until("clay", 86_400.0, "429")
            await trio.testing.wait_all_tasks_blocked()
            assert gate.stats()["upstreams"]["clay"]["closed_for"] == pytest.approx(60.0)
            assert records.data["clay"]["until"] == pytest.approx(1_060.0)
            nursery.cancel_scope.cancel()


async def test_persisted_closure_survives_restart(autojump_clock: trio.testing.MockClock) -> None:
    """A new gate built from the persisted records honours what is left of a closure."""
    records = Records()
    wall = WallClock(1_000.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first = make_gate(records, wall_clock=wall)
            await nursery.start(first.run)
            first.close_until("clay", 30.0, "429")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert records.data["clay"] == {"until": 1_030.0, "reason": "429"}

        wall.now = 1_010.0  # the daemon restarts 10 s later: 20 s of closure remain
        async with trio.open_nursery() as nursery:
            second = make_gate(records, wall_clock=wall)
            await nursery.start(second.run)
            start = trio.current_time()
            with pytest.raises(RateLimitedRefusal) as info:
                await second.acquire("clay", start + 5.0)
            assert info.value.retry_after == pytest.approx(20.0)
            await second.acquire("clay", None)
            assert trio.current_time() == pytest.approx(start + 20.0)
            nursery.cancel_scope.cancel()

        wall.now = 1_040.0  # a restart after the closure passed ignores it
        async with trio.open_nursery() as nursery:
            third = make_gate(records, wall_clock=wall)
            await nursery.start(third.run)
            start = trio.current_time()
            for _ in range(20):
                await third.acquire("clay", start)
            assert trio.current_time() == start
            assert third.stats()["upstreams"]["clay"]["closed"] is False
            nursery.cancel_scope.cancel()


async def test_close_until_never_blocks_when_inbox_full() -> None:
    """close_until on a full inbox returns at once and counts the dropped notice."""
    gate = make_gate()  # not running: nothing drains the inbox
    for _ in range(GATE_INBOX_SIZE + 10):  # no await in between: it cannot block anyway
        gate.close_until("clay", 1.0, "429")
    assert gate.dropped == 10
    assert gate.stats()["dropped_notices"] == 10


async def test_unlimited_upstream_needs_no_token(autojump_clock: trio.testing.MockClock) -> None:
    """An upstream without a policy passes at once but still obeys a closure."""
    gate = make_gate()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            start = trio.current_time()
            for _ in range(500):
                await gate.acquire("other", None)
            assert trio.current_time() == start
            gate.close_until("other", 2.0, "503")
            await trio.testing.wait_all_tasks_blocked()
            await gate.acquire("other", None)
            assert trio.current_time() == pytest.approx(start + 2.0)
            assert gate.stats()["upstreams"]["other"]["tokens"] is None
            nursery.cancel_scope.cancel()


async def test_reconfigure_changes_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    """reconfigure applies a new rate to the next reservations; a removed policy means unlimited."""
    gate = make_gate(policies={"clay": RatePolicy(per_second=1.0, burst=1)})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            start = trio.current_time()
            await gate.acquire("clay", None)
            await gate.acquire("clay", None)
            assert trio.current_time() == pytest.approx(start + 1.0)
            await gate.reconfigure({"clay": RatePolicy(per_second=4.0, burst=1)})
            await gate.acquire("clay", None)
            assert trio.current_time() == pytest.approx(start + 2.0)
            await gate.acquire("clay", None)
            assert trio.current_time() == pytest.approx(start + 2.25)
            await gate.reconfigure({})
            for _ in range(50):
                await gate.acquire("clay", None)
            assert trio.current_time() == pytest.approx(start + 2.25)
            nursery.cancel_scope.cancel()


async def test_stopped_gate_fails_asks(autojump_clock: trio.testing.MockClock) -> None:
    """Asks queued when the gate stops fail with ActorStopped; later asks raise at once."""
    gate = make_gate()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            nursery.cancel_scope.cancel()
        with pytest.raises(ActorStopped):
            await gate.acquire("clay", None)
        with pytest.raises(ActorStopped):
            await gate.reconfigure(CLAY)


async def test_status_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    """stats() reports tokens, waiting callers and counters per upstream, as plain values."""
    gate = make_gate()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            for _ in range(20):
                await gate.acquire("clay", None)
            for _ in range(3):
                nursery.start_soon(gate.acquire, "clay", None)
            await trio.testing.wait_all_tasks_blocked()
            clay = gate.stats()["upstreams"]["clay"]
            assert clay["tokens"] == 0.0
            assert clay["waiting"] == 3
            assert clay["admitted"] == 23
            assert clay["closed"] is False
            nursery.cancel_scope.cancel()


async def test_nonsense_retry_after_is_ignored(autojump_clock: trio.testing.MockClock) -> None:
    """A zero, negative or NaN Retry-After closes nothing and persists nothing."""
    records = Records()
    gate = make_gate(records)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            for seconds in (0.0, -5.0, float("nan")):
                gate.close_until("clay", seconds, "429")
            await trio.testing.wait_all_tasks_blocked()
            assert gate.stats()["upstreams"]["clay"]["closed"] is False
            assert records.data == {}
            nursery.cancel_scope.cancel()
