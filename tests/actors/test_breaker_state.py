"""The breaker's pure state machine, with explicit ``now`` values (no trio, no clock)."""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import given, settings

from claykiln.actors.breaker_state import (
    BreakerMachine,
    RollingWindow,
    restore_from_record,
    to_record,
)
from claykiln.actors.breaker_types import (
    BreakerPolicy,
    BreakerState,
    Outcome,
    Rejection,
    Ticket,
    decide_from_view,
    policy_for,
    view_to_wire,
)

S, F, I = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED  # noqa: E741


# The window-only breaker with a fixed 30 s open interval (the seed's shape): the in-a-row
# signals and the growing interval have their own tests in test_breaker_signals.py.
FIXED: dict[str, Any] = {
    "consecutive_failures": 0,
    "consecutive_connect_failures": 0,
    "reset_backoff": 1.0,
    "reset_jitter": 0.0,
}


def machine(**overrides: Any) -> BreakerMachine:
    policy = BreakerPolicy(**{**FIXED, "volume_threshold": 4, "reset_timeout": 30.0, **overrides})
    return BreakerMachine("clay", policy)


def ticket(m: BreakerMachine, now: float) -> Ticket:
    got = m.acquire(now)
    assert isinstance(got, Ticket), got
    return got


def feed(m: BreakerMachine, outcomes: list[Outcome], now: float, duration: float = 0.01) -> None:
    for outcome in outcomes:
        m.record(ticket(m, now), outcome, duration, now)


def tripped(**overrides: Any) -> BreakerMachine:
    """A machine opened at t=0 by four failures."""
    m = machine(**overrides)
    feed(m, [F, F, F, F], 0.0)
    assert m.state is BreakerState.OPEN
    m.take_transitions()
    return m


# -- policy and lookup ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"error_threshold": 0},
        {"error_threshold": 1.5},
        {"volume_threshold": 0},
        {"window": 0},
        {"buckets": 0},
        {"slow_call_duration": 0},
        {"slow_call_threshold": 0},
        {"reset_timeout": -1},
        {"consecutive_failures": -1},
        {"consecutive_connect_failures": -1},
        {"reset_backoff": 0.5},
        {"max_reset_timeout": -1},
        {"reset_jitter": 1.0},
        {"healthy_period": -1},
        {"half_open_probes": 0},
        {"probe_timeout": 0},
    ],
)
def test_policy_rejects_nonsense(bad: dict[str, Any]) -> None:
    """A policy with a threshold, size or duration out of range cannot be built."""
    with pytest.raises(ValueError):
        BreakerPolicy(**bad)


def test_policy_defaults_are_the_documented_ones() -> None:
    """The defaults are the documented ones (docs/configuration.md)."""
    p = BreakerPolicy()
    assert (p.error_threshold, p.volume_threshold, p.window, p.buckets) == (0.5, 10, 10.0, 10)
    assert (p.slow_call_duration, p.slow_call_threshold) == (None, 1.0)
    assert (p.consecutive_failures, p.consecutive_connect_failures) == (5, 3)
    assert (p.reset_timeout, p.reset_backoff, p.max_reset_timeout) == (0.5, 2.0, 60.0)
    assert (p.reset_jitter, p.healthy_period) == (0.1, 60.0)
    assert (p.half_open_probes, p.probe_timeout, p.probe_operation) == (1, 60.0, None)


def test_policy_for_falls_back_from_operation_to_upstream_to_default() -> None:
    """A key uses its own policy, else its upstream's ("clay/op" -> "clay"), else the default."""
    own, upstream, default = BreakerPolicy(buckets=1), BreakerPolicy(buckets=2), BreakerPolicy()
    policies = {"clay/push": own, "clay": upstream}
    assert policy_for("clay/push", policies, default) is own
    assert policy_for("clay/poll", policies, default) is upstream
    assert policy_for("other/x", policies, default) is default


# -- rolling window -------------------------------------------------------------------------
def test_window_forgets_calls_older_than_the_window() -> None:
    """Calls leave the window bucket by bucket as time passes."""
    w = RollingWindow(window=10.0, buckets=10)
    w.add(0.5, failed=True, slow=False)
    w.add(3.5, failed=False, slow=True)
    w.advance(9.9)
    assert (w.calls, w.failures, w.slow_calls) == (2, 1, 1)
    w.advance(10.0)  # the bucket [0, 1) expired
    assert (w.calls, w.failures, w.slow_calls) == (1, 0, 1)
    w.advance(100.0)
    assert (w.calls, w.failures, w.slow_calls) == (0, 0, 0)


# -- closed -> open -------------------------------------------------------------------------
def test_below_volume_threshold_never_trips() -> None:
    """Three failures out of three stay closed when four calls are needed."""
    m = machine()
    feed(m, [F, F, F], 0.0)
    assert m.state is BreakerState.CLOSED


def test_opens_when_error_rate_reaches_threshold() -> None:
    """At the volume threshold, failures/calls >= error_threshold opens with a reset deadline."""
    m = machine()
    feed(m, [S, S, F], 1.0)
    assert m.state is BreakerState.CLOSED
    feed(m, [F], 2.0)
    assert m.state is BreakerState.OPEN
    assert m.open_until == 32.0
    [t] = m.take_transitions()
    assert (t.before, t.after, t.reason, t.calls, t.failures) == (
        BreakerState.CLOSED,
        BreakerState.OPEN,
        "error_rate",
        4,
        2,
    )


def test_error_rate_below_threshold_stays_closed() -> None:
    """One failure in four (25 %) does not trip a 50 % breaker."""
    m = machine()
    feed(m, [S, F, S, S, S, F, S, S], 0.0)
    assert m.state is BreakerState.CLOSED


def test_ignored_outcomes_are_not_counted() -> None:
    """IGNORED calls (a 429, a cancelled caller) neither count toward volume nor failures."""
    m = machine()
    feed(m, [F, F, F, I, I, I], 0.0)
    assert m.state is BreakerState.CLOSED
    assert m.view(0.0).calls == 3


def test_slow_calls_trip_when_slow_rate_reaches_threshold() -> None:
    """Calls slower than slow_call_duration open the breaker at slow_call_threshold."""
    m = machine(slow_call_duration=2.0, slow_call_threshold=0.5)
    feed(m, [S, S], 0.0, duration=0.1)
    feed(m, [S], 0.0, duration=2.5)
    assert m.state is BreakerState.CLOSED
    feed(m, [S], 0.0, duration=3.0)
    assert m.state is BreakerState.OPEN
    assert m.take_transitions()[-1].reason == "slow_calls"


def test_slow_calls_ignored_without_slow_call_duration() -> None:
    """With no slow_call_duration, a slow success is just a success."""
    m = machine()
    feed(m, [S] * 10, 0.0, duration=999.0)
    assert m.state is BreakerState.CLOSED


def test_failures_leave_the_window() -> None:
    """Failures older than the window no longer count toward a trip."""
    m = machine(window=10.0, buckets=10)
    feed(m, [F, F, F], 0.0)
    feed(m, [F], 10.5)
    assert m.state is BreakerState.CLOSED
    assert m.view(10.5).calls == 1


def test_outcome_of_a_call_admitted_before_the_trip_is_stale() -> None:
    """A ticket from before a state change is ignored (another generation)."""
    m = machine()
    late = ticket(m, 0.0)
    feed(m, [F, F, F, F], 0.0)
    assert m.record(late, F, 0.01, 1.0) is False


# -- open -> half-open -> closed / open -----------------------------------------------------
def test_open_rejects_with_time_left_until_half_open() -> None:
    """While open, acquire is a rejection whose retry_after counts down to half-open."""
    m = tripped()
    got = m.acquire(12.0)
    assert got == Rejection("clay", BreakerState.OPEN, 18.0)


def test_goes_half_open_at_reset_timeout() -> None:
    """At open_until the machine is half-open and admits a probe."""
    m = tripped()
    m.tick(29.9)
    assert m.state is BreakerState.OPEN
    m.tick(30.0)
    assert m.state is BreakerState.HALF_OPEN
    assert m.take_transitions()[0].reason == "reset_timeout"
    assert ticket(m, 30.0).probe


def test_half_open_admits_exactly_the_probe_count() -> None:
    """With 2 probe slots, the third concurrent caller is rejected until the probe deadline."""
    m = tripped(half_open_probes=2, probe_timeout=5.0)
    a, b = ticket(m, 30.0), ticket(m, 31.0)
    assert a.probe and b.probe and a.probe_id != b.probe_id
    assert m.acquire(32.0) == Rejection("clay", BreakerState.HALF_OPEN, 3.0)
    assert m.view(32.0).probes_in_flight == 2


def test_all_probes_succeeding_closes_with_a_fresh_window() -> None:
    """N successful probes close the breaker; the window starts empty."""
    m = tripped(half_open_probes=2)
    a, b = ticket(m, 30.0), ticket(m, 30.0)
    m.record(a, S, 0.1, 30.5)
    assert m.state is BreakerState.HALF_OPEN
    assert m.acquire(30.6) == Rejection("clay", BreakerState.HALF_OPEN, 59.4)  # round is full
    m.record(b, S, 0.1, 31.0)
    assert m.state is BreakerState.CLOSED
    view = m.view(31.0)
    assert (view.calls, view.failures, view.open_until) == (0, 0, None)
    assert m.take_transitions()[-1].reason == "probes_succeeded"


def test_a_failed_probe_reopens_for_a_new_reset_timeout() -> None:
    """Any failed probe opens the breaker again from that moment."""
    m = tripped(half_open_probes=2)
    a, b = ticket(m, 30.0), ticket(m, 30.0)
    m.record(a, S, 0.1, 30.2)
    m.record(b, F, 0.1, 30.5)
    assert m.state is BreakerState.OPEN
    assert m.open_until == 60.5
    assert m.take_transitions()[-1].reason == "probe_failed"


def test_a_slow_successful_probe_counts_as_failed() -> None:
    """With slow_call_duration set, a probe that succeeded too slowly reopens."""
    m = tripped(slow_call_duration=1.0)
    m.record(ticket(m, 30.0), S, 1.5, 31.5)
    assert m.state is BreakerState.OPEN
    assert m.take_transitions()[-1].reason == "probe_slow"


def test_an_ignored_probe_frees_its_slot_without_a_verdict() -> None:
    """An IGNORED probe (429, cancelled caller) lets another probe through."""
    m = tripped()
    m.record(ticket(m, 30.0), I, 0.1, 30.1)
    assert m.state is BreakerState.HALF_OPEN
    assert ticket(m, 30.2).probe


def test_a_hung_probe_reopens_at_probe_timeout_and_its_late_outcome_is_stale() -> None:
    """A probe not reported within probe_timeout counts as failed; its late report is ignored."""
    m = tripped(probe_timeout=5.0)
    hung = ticket(m, 30.0)
    assert m.next_deadline() == 35.0
    m.tick(35.0)
    assert m.state is BreakerState.OPEN
    assert m.open_until == 65.0
    assert m.take_transitions()[-1].reason == "probe_timeout"
    assert m.record(hung, S, 0.1, 36.0) is False
    assert m.state is BreakerState.OPEN


# -- forced states --------------------------------------------------------------------------
def test_forced_open_refuses_without_a_retry_time_and_never_half_opens() -> None:
    """forced_open rejects with retry_after None and ignores reset_timeout."""
    m = machine()
    m.force("open", 0.0)
    m.tick(1e9)
    assert m.acquire(1e9) == Rejection("clay", BreakerState.FORCED_OPEN, None)
    assert m.next_deadline() is None


def test_forced_closed_counts_but_never_trips() -> None:
    """forced_closed admits everyone and keeps counting, without ever opening."""
    m = machine()
    m.force("closed", 0.0)
    feed(m, [F] * 20, 0.0)
    view = m.view(0.0)
    assert (view.state, view.calls, view.failures) == (BreakerState.FORCED_CLOSED, 20, 20)


def test_disabled_counts_nothing_and_hands_out_uncounted_tickets() -> None:
    """disabled admits everyone with tickets that need no report."""
    m = machine()
    m.force("disabled", 0.0)
    t = ticket(m, 0.0)
    assert t.counted is False
    feed(m, [F] * 20, 0.0)
    assert m.view(0.0).calls == 0
    assert m.state is BreakerState.DISABLED


def test_reset_returns_to_closed_with_a_fresh_window() -> None:
    """reset leaves an open (or forced) breaker closed and empty."""
    m = tripped()
    m.force("reset", 1.0)
    view = m.view(1.0)
    assert (view.state, view.calls, view.open_until) == (BreakerState.CLOSED, 0, None)
    assert m.take_transitions()[-1].reason == "forced_reset"


def test_unknown_force_command_is_refused() -> None:
    """A force command outside open/closed/disabled/reset raises ValueError."""
    with pytest.raises(ValueError, match="open, closed, disabled, reset"):
        machine().force("sideways", 0.0)  # type: ignore[arg-type]


# -- reconfigure ----------------------------------------------------------------------------
def test_reconfigure_keeps_state_and_counts_and_applies_new_thresholds() -> None:
    """New thresholds apply to the counts already in the window; the state is kept."""
    m = machine(volume_threshold=100)
    feed(m, [F] * 5, 0.0)
    m.reconfigure(BreakerPolicy(**FIXED, volume_threshold=6), 0.0)
    assert m.view(0.0).calls == 5
    feed(m, [F], 0.0)
    assert m.state is BreakerState.OPEN


def test_reconfigure_with_another_window_shape_restarts_the_window() -> None:
    """Changing window or buckets empties the window (the old buckets do not map)."""
    m = machine()
    feed(m, [F, S], 0.0)
    m.reconfigure(BreakerPolicy(**FIXED, volume_threshold=4, buckets=5), 0.0)
    assert m.view(0.0).calls == 0


def test_reconfigure_to_fewer_probes_closes_a_round_already_good_enough() -> None:
    """Lowering half_open_probes below the successes already seen closes the breaker."""
    m = tripped(half_open_probes=3)
    m.record(ticket(m, 30.0), S, 0.1, 30.0)
    m.reconfigure(BreakerPolicy(**FIXED, volume_threshold=4, half_open_probes=1), 30.5)
    assert m.state is BreakerState.CLOSED


# -- persistence ----------------------------------------------------------------------------
def test_record_round_trip_keeps_the_remaining_open_time() -> None:
    """An open breaker persisted and restored 10 s later has 10 s less to wait."""
    m = tripped()  # open_until = 30 (trio), wall = trio + 1000 at persist time
    record = to_record(m, now=0.0, wall_now=1000.0)
    assert record == {
        "v": 1,
        "state": "open",
        "forced": False,
        "opened_at": 1000.0,
        "open_until": 1030.0,
        "streak": 1,
    }
    msgpack.packb(record)
    restored = restore_from_record(record, m.policy, now=500.0, wall_now=1010.0)
    assert restored.state is BreakerState.OPEN
    assert restored.open_until == pytest.approx(520.0)
    fresh = BreakerMachine("clay", m.policy)
    fresh.restore(restored, 500.0)
    assert fresh.acquire(500.0) == Rejection("clay", BreakerState.OPEN, pytest.approx(20.0))


def test_open_record_whose_reset_passed_during_downtime_comes_up_half_open() -> None:
    """If the reset time passed while the daemon was down, the breaker starts half-open."""
    m = tripped()
    record = to_record(m, now=0.0, wall_now=1000.0)
    fresh = BreakerMachine("clay", m.policy)
    fresh.restore(restore_from_record(record, m.policy, now=7.0, wall_now=1031.0), 7.0)
    assert fresh.state is BreakerState.HALF_OPEN
    assert fresh.take_transitions()[-1].reason == "reset_timeout"


def test_restore_clamps_open_time_when_the_wall_clock_went_back() -> None:
    """A wall clock moved back never extends the open time beyond the longest interval."""
    m = tripped()
    record = to_record(m, now=0.0, wall_now=1000.0)
    restored = restore_from_record(record, m.policy, now=0.0, wall_now=500.0)
    assert restored.open_until == 30.0


@pytest.mark.parametrize("command", ["open", "closed", "disabled"])
def test_forced_state_survives_a_restore(command: Any) -> None:
    """A forced state is persisted as forced and comes back forced, whatever the time."""
    m = machine()
    m.force(command, 0.0)
    record = to_record(m, 0.0, 1000.0)
    assert record["forced"] is True
    fresh = BreakerMachine("clay", m.policy)
    fresh.restore(restore_from_record(record, m.policy, 0.0, 1e9), 0.0)
    assert fresh.state is m.state


@pytest.mark.parametrize(
    "record",
    [{}, {"state": "melted"}, {"state": "open", "open_until": "soon"}, {"state": None}],
)
def test_malformed_record_is_refused(record: dict[str, Any]) -> None:
    """A record without a known state or with non-numeric times raises ValueError."""
    with pytest.raises(ValueError):
        restore_from_record(record, BreakerPolicy(), 0.0, 0.0)


# -- snapshot rule --------------------------------------------------------------------------
def test_view_answers_closed_and_open_without_the_actor() -> None:
    """Closed gives the shared ticket, open with time left a rejection, half-open defers."""
    m = machine()
    view = m.view(0.0)
    assert decide_from_view(view, 0.0) == Ticket("clay", m.generation)
    feed(m, [F] * 4, 0.0)
    assert decide_from_view(m.view(0.0), 10.0) == Rejection("clay", BreakerState.OPEN, 20.0)
    assert decide_from_view(m.view(0.0), 30.0) is None  # due for half-open: ask the actor
    m.tick(30.0)
    assert decide_from_view(m.view(30.0), 30.0) is None  # a probe slot: ask the actor


def test_wire_view_is_msgpack_able_with_wall_clock_times() -> None:
    """The breaker.list form packs with msgpack and gives open_until in wall-clock seconds."""
    m = tripped()
    wire = view_to_wire(m.view(10.0), now=10.0, wall_now=5000.0)
    msgpack.packb(wire)
    assert wire["state"] == "open"
    assert wire["retry_after"] == 20.0
    assert wire["open_until"] == 5020.0
    assert wire["opened_at"] == 4990.0


# -- properties -----------------------------------------------------------------------------
policies = st.builds(
    BreakerPolicy,
    error_threshold=st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]),
    volume_threshold=st.integers(1, 12),
    window=st.sampled_from([1.0, 5.0, 10.0]),
    buckets=st.integers(1, 10),
    slow_call_duration=st.none() | st.sampled_from([0.5, 1.0]),
    slow_call_threshold=st.sampled_from([0.3, 0.6, 1.0]),
    half_open_probes=st.integers(1, 4),
    consecutive_failures=st.just(0),  # the window alone, as the reference computes it
    consecutive_connect_failures=st.just(0),
)
calls = st.lists(
    st.tuples(
        st.floats(0, 1, allow_nan=False) | st.sampled_from([0.0, 2.0]),
        st.sampled_from([S, F, I]),
        st.floats(0, 2, allow_nan=False),
    ),
    min_size=4,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(policies, calls)
def test_trips_exactly_when_the_reference_window_says_so(
    policy: BreakerPolicy, sequence: list[tuple[float, Outcome, float]]
) -> None:
    """Matches a brute-force window: trips on the first counted call reaching the thresholds."""
    m = BreakerMachine("k", policy)
    width = policy.window / policy.buckets
    seen: list[tuple[float, bool, bool]] = []
    now = 0.0
    for dt, outcome, duration in sequence:
        now += dt
        m.record(ticket(m, now), outcome, duration, now)
        if outcome is not Outcome.IGNORED:
            slow = policy.slow_call_duration is not None and duration > policy.slow_call_duration
            seen.append((now, outcome is Outcome.FAILURE, slow))
        oldest = math.floor(now / width) - policy.buckets
        live = [c for c in seen if math.floor(c[0] / width) > oldest]
        total = len(live)
        failures = sum(c[1] for c in live)
        slows = sum(c[2] for c in live)
        should_trip = (
            outcome is not Outcome.IGNORED
            and total >= policy.volume_threshold
            and (
                failures / total >= policy.error_threshold
                or (
                    policy.slow_call_duration is not None
                    and slows / total >= policy.slow_call_threshold
                )
            )
        )
        if should_trip:
            assert m.state is BreakerState.OPEN
            return
        assert m.state is BreakerState.CLOSED
        assert (m.window.calls, m.window.failures, m.window.slow_calls) == (total, failures, slows)


@settings(max_examples=200, deadline=None)
@given(policies, st.lists(st.sampled_from([S, F]), max_size=30))
def test_never_opens_below_volume_threshold(policy: BreakerPolicy, outcomes: list[Outcome]) -> None:
    """Fewer completed calls than volume_threshold never open the breaker, whatever they were."""
    m = BreakerMachine("k", policy)
    for outcome in outcomes[: policy.volume_threshold - 1]:
        m.record(ticket(m, 0.0), outcome, 5.0, 0.0)
    assert m.state is BreakerState.CLOSED


ops = st.lists(
    st.one_of(
        st.just(("acquire", 0, S)),
        st.tuples(st.just("record"), st.integers(0, 10), st.sampled_from([S, S, S, F, I])),
        st.tuples(st.just("wait"), st.integers(1, 20), st.just(S)),
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), ops)
def test_half_open_never_admits_more_than_the_probe_count(
    probes: int, steps: list[tuple[str, int, Outcome]]
) -> None:
    """Any interleaving: at most half_open_probes live probes; a round closes on that many."""
    policy = BreakerPolicy(
        **FIXED,
        volume_threshold=1,
        reset_timeout=10.0,
        half_open_probes=probes,
        probe_timeout=15.0,
    )
    m = BreakerMachine("k", policy)
    now = 0.0
    m.record(ticket(m, now), F, 0.0, now)
    now += policy.reset_timeout  # start half-open
    outstanding: list[Ticket] = []
    successes: dict[int, int] = {}
    for op, arg, outcome in steps:
        if op == "acquire":
            got = m.acquire(now)
            if isinstance(got, Ticket) and got.probe:
                outstanding.append(got)
        elif op == "record" and outstanding:
            t = outstanding.pop(arg % len(outstanding))
            before = m.state
            if m.record(t, outcome, 0.0, now) and outcome is S and before is BreakerState.HALF_OPEN:
                successes[t.generation] = successes.get(t.generation, 0) + 1
                if m.state is BreakerState.CLOSED:
                    assert successes[t.generation] == probes
        else:
            now += arg
            m.tick(now)
        live = [t for t in outstanding if t.generation == m.generation]
        assert len(live) <= probes
        assert m.probes_in_flight <= probes
        if m.state is BreakerState.CLOSED:  # trip it again so the rounds keep coming
            m.record(ticket(m, now), F, 0.0, now)
        if m.state is BreakerState.OPEN:
            now = max(now, m.next_deadline() or now)
