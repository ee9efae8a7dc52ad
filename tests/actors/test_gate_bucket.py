"""The gate's pure pacing core (GCRA bucket), tested without an event loop."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.gate import Bucket, RatePolicy, Refusal, earliest_admission

POLICY = RatePolicy(per_second=10.0, burst=20, margin=0.0)


def test_full_bucket_admits_burst_at_once_then_paces() -> None:
    """A fresh bucket admits `burst` reservations now, then one per interval."""
    bucket = Bucket(POLICY, now=100.0)
    times = [bucket.reserve(100.0, None) for _ in range(23)]
    assert times[:20] == [100.0] * 20
    assert times[20:] == pytest.approx([100.1, 100.2, 100.3])


def test_refusal_past_deadline_consumes_nothing() -> None:
    """A reservation past the deadline is refused with retry_after and consumes nothing."""
    bucket = Bucket(RatePolicy(per_second=2.0, burst=1), now=0.0)
    assert bucket.reserve(0.0, None) == 0.0
    refusal = bucket.reserve(0.0, deadline=0.25)
    assert refusal == Refusal(retry_after=0.5, reason="paced")
    assert bucket.limited == 1
    assert bucket.reserve(0.0, deadline=0.5) == 0.5


def test_token_available_now_ignores_a_passed_deadline() -> None:
    """No wait means no refusal, even when the caller's deadline already passed."""
    bucket = Bucket(POLICY, now=10.0)
    assert bucket.reserve(10.0, deadline=9.0) == 10.0


def test_closure_refuses_with_reason_closed() -> None:
    """While closed, a short deadline is refused with reason closed and the time to reopening."""
    bucket = Bucket(POLICY, now=0.0)
    assert bucket.close(30.0, "429")
    refusal = bucket.reserve(5.0, deadline=10.0)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "closed"
    assert refusal.retry_after == pytest.approx(25.0)


def test_closure_never_shortens() -> None:
    """A shorter closure than the current one changes nothing."""
    bucket = Bucket(POLICY, now=0.0)
    assert bucket.close(30.0, "429")
    assert not bucket.close(20.0, "503")
    assert bucket.closed_until == 30.0
    assert bucket.reason == "429"


def test_reopening_starts_with_one_token() -> None:
    """After a closure the bucket holds one token, then paces at the policy rate (no burst)."""
    bucket = Bucket(POLICY, now=0.0)
    bucket.close(30.0, "429")
    assert bucket.view("k", 30.0).tokens(30.0) == pytest.approx(1.0)
    assert bucket.view("k", 10.0).tokens(10.0) == 0.0
    assert [bucket.reserve(10.0, None) for _ in range(3)] == pytest.approx([30.0, 30.1, 30.2])


def test_unlimited_bucket_only_obeys_closures() -> None:
    """Without a policy every reservation is admitted now, or at the reopening."""
    bucket = Bucket(None, now=0.0)
    assert [bucket.reserve(1.0, None) for _ in range(100)] == [1.0] * 100
    bucket.close(5.0, "503")
    assert bucket.reserve(2.0, None) == 5.0
    assert bucket.view("k", 2.0).tokens(2.0) is None


def test_view_counts_waiting_and_tokens() -> None:
    """The view reports tokens left and callers holding a future admission time."""
    bucket = Bucket(RatePolicy(per_second=1.0, burst=2, margin=0.0), now=0.0)
    for _ in range(4):
        bucket.reserve(0.0, None)
    view = bucket.view("clay", 0.0)
    assert view.tokens(0.0) == 0.0
    assert view.waiting(0.0) == 2
    assert view.waiting(1.0) == 1
    assert view.stats(0.0, wall_now=1000.0)["waiting"] == 2
    assert attrs.has(type(view))


@given(
    rate=st.floats(min_value=0.5, max_value=100.0),
    burst=st.integers(min_value=1, max_value=50),
    arrivals=st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=1, max_size=200),
)
def test_admissions_never_exceed_the_bucket(rate: float, burst: int, arrivals: list[float]) -> None:
    """Any arrivals: admissions are FIFO and any w-second window admits <= burst + rate*w."""
    policy = RatePolicy(per_second=rate, burst=burst, margin=0.0)
    bucket = Bucket(policy, now=0.0)
    admitted = []
    for now in sorted(arrivals):
        at = bucket.reserve(now, None)
        assert isinstance(at, float)
        assert at >= now
        admitted.append(at)
    assert admitted == sorted(admitted)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            assert j - i + 1 <= burst + rate * span + 1e-6


def test_earliest_admission_matches_reserve() -> None:
    """The snapshot's estimate equals what the bucket hands out next."""
    bucket = Bucket(POLICY, now=0.0)
    for _ in range(25):
        bucket.reserve(0.0, None)
    estimate = earliest_admission(0.0, bucket.tat, bucket.closed_until, POLICY)
    assert bucket.reserve(0.0, None) == estimate


def test_policy_validation() -> None:
    """Policies reject a non-positive rate and an empty burst."""
    with pytest.raises(ValueError, match="per_second"):
        RatePolicy(per_second=0.0)
    with pytest.raises(ValueError, match="burst"):
        RatePolicy(burst=0)


def test_closure_only_grows() -> None:
    """A closure never moves backwards, whatever the order of notices."""
    bucket = Bucket(POLICY, now=0.0)
    assert bucket.close(10.0, "429")
    assert not bucket.close(10.0, "429")
    assert bucket.close(10.5, "503")
    assert bucket.closed_until == 10.5


@given(lag=st.floats(min_value=0.0, max_value=0.149), n=st.integers(min_value=21, max_value=80))
def test_margin_keeps_clay_happy_when_the_first_arrival_lags(lag: float, n: int) -> None:
    """With the default margin, Clay's own bucket (counting from the first *arrival*) never
    refuses our admissions while the burst's cold connections arrive less than 150 ms late."""
    from claykiln.daemon.simulator import TokenBucket

    policy = RatePolicy(per_second=10.0, burst=20)  # default margin 0.15 s
    bucket = Bucket(policy, now=0.0)
    admitted = [bucket.reserve(0.0, None) for _ in range(n)]
    assert all(isinstance(t, float) for t in admitted)
    # The burst goes out on fresh connections (late by `lag`); later calls reuse warm ones.
    arrivals = sorted(t + lag if i < 20 else t for i, t in enumerate(admitted))
    clay = TokenBucket(rate=10.0, burst=20)
    # Clay starts counting at the first arrival it sees.
    assert all(clay.try_take(t) for t in arrivals)


def test_without_margin_a_late_first_arrival_overshoots() -> None:
    """The failure the margin exists for: exact pacing + a burst 60 ms late -> a 429."""
    from claykiln.daemon.simulator import TokenBucket

    bucket = Bucket(RatePolicy(per_second=10.0, burst=20, margin=0.0), now=0.0)
    admitted = [bucket.reserve(0.0, None) for _ in range(21)]
    arrivals = sorted(t + 0.06 if i < 20 else t for i, t in enumerate(admitted))
    clay = TokenBucket(rate=10.0, burst=20)
    assert not all(clay.try_take(t) for t in arrivals)
