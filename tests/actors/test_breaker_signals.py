"""The breaker's trip signals beside the error rate, its growing open interval and the probe
hooks (probe operation, opening events): the pure machine, then the actor on the autojump clock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.breaker import BreakerBoard
from claykiln.actors.breaker_state import BreakerMachine, restore_from_record, to_record
from claykiln.actors.breaker_types import BreakerPolicy, BreakerState, Outcome, Ticket
from claykiln.actors.errors import BreakerOpenRefusal

S, F, C, I = Outcome.SUCCESS, Outcome.FAILURE, Outcome.CONNECT_FAILURE, Outcome.IGNORED  # noqa: E741
NO_JITTER = BreakerPolicy(reset_jitter=0.0)
TIMEOUT = 3600.0


def machine(policy: BreakerPolicy = NO_JITTER, seed: int = 1) -> BreakerMachine:
    return BreakerMachine("clay", policy, random.Random(seed))


def feed(m: BreakerMachine, outcomes: list[Outcome], now: float) -> None:
    for outcome in outcomes:
        got = m.acquire(now)
        assert isinstance(got, Ticket), got
        m.record(got, outcome, 0.001, now)


def reasons(m: BreakerMachine) -> list[str]:
    return [t.reason for t in m.take_transitions()]


def fail_probe(m: BreakerMachine, now: float) -> None:
    """Wait out the open interval, then fail the half-open probe."""
    assert m.open_until is not None
    now = max(now, m.open_until)
    probe = m.acquire(now)
    assert isinstance(probe, Ticket) and probe.probe
    m.record(probe, F, 0.001, now)


# -- trip signals --------------------------------------------------------------------------------
def test_consecutive_failures_trip_a_window_full_of_successes() -> None:
    """After 200 successes, five failures in a row open the breaker; four do not."""
    m = machine()
    feed(m, [S] * 200 + [F] * 4, 0.0)
    assert m.state is BreakerState.CLOSED
    feed(m, [F], 0.0)
    assert m.state is BreakerState.OPEN
    assert reasons(m) == ["consecutive_failures"]


def test_a_success_restarts_the_count_of_failures_in_a_row() -> None:
    """F F F F S F F F F: never five in a row, and 8/9 errors only count in the window."""
    m = machine(BreakerPolicy(volume_threshold=100, reset_jitter=0.0))
    feed(m, [F, F, F, F, S, F, F, F, F], 0.0)
    assert m.state is BreakerState.CLOSED
    assert m.failures_in_row == 4


def test_connect_failures_in_a_row_trip_sooner() -> None:
    """Three connect failures in a row open it (reason consecutive_connect_failures)."""
    m = machine()
    feed(m, [S, C, C], 0.0)
    assert m.state is BreakerState.CLOSED
    feed(m, [C], 0.0)
    assert reasons(m) == ["consecutive_connect_failures"]


def test_an_answer_from_the_upstream_restarts_the_connect_count() -> None:
    """A 5xx between connect failures proves the host accepts connections: C C F C C stays
    closed on the connect signal (the failure count alone would trip at 5)."""
    m = machine(BreakerPolicy(consecutive_failures=0, volume_threshold=100, reset_jitter=0.0))
    feed(m, [C, C, F, C, C], 0.0)
    assert m.state is BreakerState.CLOSED
    feed(m, [C], 0.0)
    assert m.state is BreakerState.OPEN


def test_ignored_outcomes_neither_count_nor_restart_a_run() -> None:
    """A 429 or a caller's own deadline between failures leaves the run of failures as it was."""
    m = machine()
    feed(m, [F, F, I, F, F, I], 0.0)
    assert (m.state, m.failures_in_row) == (BreakerState.CLOSED, 4)
    feed(m, [F], 0.0)
    assert m.state is BreakerState.OPEN


def test_zero_turns_the_in_a_row_signals_off() -> None:
    """With both counts at 0 only the window trips: 9 failures stay below volume_threshold 10."""
    off = BreakerPolicy(consecutive_failures=0, consecutive_connect_failures=0, reset_jitter=0.0)
    m = machine(off)
    feed(m, [C] * 9, 0.0)
    assert m.state is BreakerState.CLOSED
    feed(m, [F], 0.0)
    assert reasons(m) == ["error_rate"]


def test_the_window_still_catches_partial_failure() -> None:
    """Every other call failing never makes a run of five; the error rate over the window does."""
    m = machine()
    feed(m, [S, F] * 4, 0.0)
    assert m.state is BreakerState.CLOSED
    feed(m, [S, F], 1.0)
    assert reasons(m) == ["error_rate"]


def test_forced_closed_counts_runs_but_never_trips() -> None:
    """An operator's forced-closed breaker ignores every trip signal."""
    m = machine()
    m.force("closed", 0.0)
    feed(m, [F] * 20, 0.0)
    assert m.state is BreakerState.FORCED_CLOSED


# -- the open interval -----------------------------------------------------------------------------
def test_open_interval_doubles_from_the_base_to_the_cap() -> None:
    """Openings in a row (failed probes) stay open 0.5, 1, 2, 4 s, then the cap of 4 s."""
    m = machine(BreakerPolicy(max_reset_timeout=4.0, reset_jitter=0.0))
    now = 0.0
    feed(m, [F] * 5, now)
    intervals = []
    for _ in range(5):
        assert m.open_until is not None and m.opened_at is not None
        intervals.append(m.open_until - m.opened_at)
        now = m.open_until
        fail_probe(m, now)
    assert intervals == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert m.streak == 6


def test_a_healthy_period_returns_the_interval_to_the_base() -> None:
    """Reopened soon after closing, the interval keeps growing; after healthy_period closed, the
    next opening starts again from reset_timeout."""
    policy = BreakerPolicy(reset_jitter=0.0, healthy_period=60.0)
    m = machine(policy)
    feed(m, [F] * 5, 0.0)
    fail_probe(m, 0.0)  # second opening: 1 s
    assert m.open_until == pytest.approx(1.5)
    probe = m.acquire(1.5)
    assert isinstance(probe, Ticket)
    m.record(probe, S, 0.001, 1.5)
    assert m.state is BreakerState.CLOSED
    feed(m, [F] * 5, 30.0)  # 28.5 s after closing: the streak goes on
    assert m.open_until == pytest.approx(32.0)
    probe = m.acquire(32.0)
    assert isinstance(probe, Ticket)
    m.record(probe, S, 0.001, 32.0)
    feed(m, [F] * 5, 92.0)  # 60 s closed: back to the base
    assert m.open_until == pytest.approx(92.5)
    assert m.streak == 1


def test_reset_restarts_the_streak() -> None:
    """An operator reset forgets the openings in a row."""
    m = machine()
    feed(m, [F] * 5, 0.0)
    fail_probe(m, 0.0)
    m.force("reset", 2.0)
    feed(m, [F] * 5, 2.0)
    assert m.open_until == pytest.approx(2.5)


def test_the_seeds_fixed_thirty_seconds_stay_reachable() -> None:
    """reset_timeout 30 s with reset_backoff 1 and no jitter: every opening lasts exactly 30 s."""
    m = machine(BreakerPolicy(reset_timeout=30.0, reset_backoff=1.0, reset_jitter=0.0))
    feed(m, [F] * 5, 0.0)
    for n in range(4):
        assert m.open_until == pytest.approx(30.0 * (n + 1))
        fail_probe(m, 30.0 * (n + 1))


def test_a_cap_below_the_base_reads_as_the_base() -> None:
    """A config that raises reset_timeout past the default cap keeps its own interval."""
    policy = BreakerPolicy(reset_timeout=120.0, max_reset_timeout=60.0, reset_jitter=0.0)
    assert [policy.open_interval(n, 0.5) for n in range(3)] == [120.0, 120.0, 120.0]


@given(
    st.integers(0, 40),
    st.floats(0.0, 0.999),
    st.sampled_from([0.0, 0.1, 0.5]),
    st.sampled_from([0.25, 1.0, 30.0]),
)
def test_jitter_stays_within_its_band(streak: int, draw: float, jitter: float, base: float) -> None:
    """Every interval lies within +/- jitter/2 of the nominal one, never past longest_open."""
    policy = BreakerPolicy(reset_timeout=base, reset_jitter=jitter)
    nominal = min(max(base, 60.0), base * 2.0 ** min(streak, 64))
    got = policy.open_interval(streak, draw)
    assert nominal * (1 - jitter / 2) <= got <= nominal * (1 + jitter / 2)
    assert got <= policy.longest_open


def test_a_restart_keeps_the_streak() -> None:
    """The openings in a row are persisted, so a restart does not probe a dead upstream faster."""
    m = machine()
    feed(m, [F] * 5, 0.0)
    fail_probe(m, 0.0)
    fail_probe(m, 2.0)  # third opening
    record = to_record(m, 2.0, 1000.0)
    assert record["streak"] == 3
    fresh = machine()
    fresh.restore(restore_from_record(record, fresh.policy, 50.0, 1000.0), 50.0)
    fresh.take_transitions()
    assert fresh.streak == 3
    fail_probe(fresh, 52.0)
    assert fresh.open_until is not None
    assert fresh.open_until - 52.0 == pytest.approx(4.0)


def test_a_probe_ticket_names_the_probe_operation() -> None:
    """Half-open with a probe operation, the probe ticket asks its caller to make that call."""
    m = machine(BreakerPolicy(reset_jitter=0.0, probe_operation="me"))
    feed(m, [F] * 5, 0.0)
    probe = m.acquire(0.5)
    assert isinstance(probe, Ticket)
    assert (probe.probe, probe.probe_operation) == (True, "me")
    assert machine().acquire(0.0) == Ticket("clay", 0)


# -- the actor --------------------------------------------------------------------------------------
class Memory:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def persist(self, key: str, record: dict[str, Any]) -> None:
        self.records[key] = dict(record)

    def load(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)


@asynccontextmanager
async def board(policy: BreakerPolicy = NO_JITTER) -> AsyncIterator[BreakerBoard]:
    memory = Memory()
    breakers = BreakerBoard(
        {"clay": policy}, policy, persist=memory.persist, load=memory.load, rng=random.Random(3)
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(breakers.run)
            yield breakers
            nursery.cancel_scope.cancel()


async def test_an_opening_sets_the_event_callers_in_backoff_wait_on(autojump_clock: Any) -> None:
    """A task waiting on opening(key) wakes the moment the fifth failure opens the breaker, and
    then sees the refusal in the snapshot; the next opening has a fresh event."""
    async with board() as breakers:
        woke: list[float] = []

        async def waiter() -> None:
            await breakers.opening("clay").wait()
            woke.append(trio.current_time())
            with pytest.raises(BreakerOpenRefusal):
                breakers.check("clay")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(1.0)
            for _ in range(5):
                breakers.record(await breakers.acquire("clay"), F, 0.001)
        assert woke == [pytest.approx(1.0)]
        assert not breakers.opening("clay").is_set()


async def test_opening_of_an_unknown_key_is_never_set(autojump_clock: Any) -> None:
    """A key the board never saw has no opening to wait for: a fresh, unset event."""
    async with board() as breakers:
        assert not breakers.opening("nobody").is_set()


async def test_settle_probe_success_closes_and_hands_the_caller_a_ticket(
    autojump_clock: Any,
) -> None:
    """A successful probe closes the breaker and the same ask returns the caller's ticket."""
    async with board(BreakerPolicy(reset_jitter=0.0, probe_operation="me")) as breakers:
        for _ in range(5):
            breakers.record(await breakers.acquire("clay"), F, 0.001)
        await trio.sleep(0.5)
        probe = await breakers.acquire("clay")
        assert probe.probe and probe.probe_operation == "me"
        with pytest.raises(BreakerOpenRefusal):  # the probe slot is taken meanwhile
            breakers.check("clay")
        with structlog.testing.capture_logs() as logs:
            ticket = await breakers.settle_probe(probe, S, 0.001)
        assert not ticket.probe
        assert breakers.snapshot["clay"].state is BreakerState.CLOSED
        assert [e["event"] for e in logs if e["event"].startswith("breaker.")] == ["breaker.closed"]


async def test_settle_probe_failure_refuses_and_reopens_longer(autojump_clock: Any) -> None:
    """A failed probe answers breaker_open at once and doubles the open interval (retry_after)."""
    async with board(BreakerPolicy(reset_jitter=0.0, probe_operation="me")) as breakers:
        for _ in range(5):
            breakers.record(await breakers.acquire("clay"), F, 0.001)
        await trio.sleep(0.5)
        probe = await breakers.acquire("clay")
        with structlog.testing.capture_logs() as logs, pytest.raises(BreakerOpenRefusal) as info:
            await breakers.settle_probe(probe, F, 0.001)
        assert info.value.retry_after == pytest.approx(1.0)
        opened = [e for e in logs if e["event"] == "breaker.opened"]
        assert [(e["reason"], e["retry_after"]) for e in opened] == [("probe_failed", 1.0)]
