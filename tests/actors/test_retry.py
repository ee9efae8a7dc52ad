"""Retry decisions: backoff bounds, retryable statuses, repeat safety, deadlines."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.errors import BadRequestRefusal, TimeoutRefusal, UpstreamRefusal
from claykiln.actors.retry import (
    Outcome,
    RetryBudget,
    RetryPlan,
    RetryPolicy,
    backoff_delay,
    is_retryable_status,
    may_retry,
    plan_retry,
)

POLICY = RetryPolicy(attempts=5, base=0.25, cap=10.0)
policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 20),
    base=st.floats(0.001, 5.0),
    cap=st.floats(0.001, 120.0),
)
methods = st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "POST", "PATCH", "post"])
statuses = st.integers(100, 599)


def _plan(outcome: Outcome, *, attempt: int = 1, method: str = "GET", **kw: object) -> RetryPlan:
    args: dict[str, object] = {
        "attempt": attempt,
        "outcome": outcome,
        "method": method,
        "repeat_safe": False,
        "now": 100.0,
        "deadline": None,
        "rng": random.Random(1),
        **kw,
    }
    return plan_retry(POLICY, **args)  # type: ignore[arg-type]


@given(policies, st.integers(1, 10_000), st.integers(0, 2**32))
def test_delay_within_full_jitter_bound(policy: RetryPolicy, attempt: int, seed: int) -> None:
    """Without Retry-After the delay lies in [0, min(cap, base * 2**(attempt-1))]."""
    delay = backoff_delay(policy, attempt, rng=random.Random(seed), retry_after=None)
    assert 0.0 <= delay <= min(policy.cap, policy.base * 2.0 ** min(attempt - 1, 62))


@given(policies, st.integers(1, 50), st.floats(-10.0, 10_000.0), st.integers(0, 2**32))
def test_retry_after_is_a_floor(
    policy: RetryPolicy, attempt: int, retry_after: float, seed: int
) -> None:
    """With Retry-After the delay is at least that (even above cap), and never negative."""
    delay = backoff_delay(policy, attempt, rng=random.Random(seed), retry_after=retry_after)
    assert delay >= max(retry_after, 0.0)
    assert delay <= max(retry_after, policy.cap)


def test_backoff_grows_then_caps() -> None:
    """The jitter ceiling doubles per attempt and stops at cap."""
    top = random.Random()
    top.uniform = lambda a, b: b  # type: ignore[method-assign]
    ceilings = [backoff_delay(POLICY, n, rng=top, retry_after=None) for n in range(1, 9)]
    assert ceilings == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_attempt_must_be_positive() -> None:
    """attempt counts from 1; 0 is a programming error."""
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(POLICY, 0, rng=random.Random(), retry_after=None)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    """408, 429, 500, 502, 503 and 504 are retryable."""
    assert is_retryable_status(status)


@given(statuses.filter(lambda s: s not in (408, 429, 500, 502, 503, 504)))
def test_other_statuses_not_retryable(status: int) -> None:
    """Every other status (all other 4xx, 501, 505 ...) is final."""
    assert not is_retryable_status(status)


@given(methods, st.booleans(), st.booleans())
def test_may_retry_table(method: str, repeat_safe: bool, sent: bool) -> None:
    """POST/PATCH repeat only if repeat_safe or never sent; other methods always may."""
    expected = method.upper() not in ("POST", "PATCH") or repeat_safe or not sent
    assert may_retry(method=method, repeat_safe=repeat_safe, sent=sent) is expected


@given(
    policies,
    st.integers(1, 25),
    statuses,
    methods,
    st.booleans(),
    st.floats(0.0, 1e6),
    st.none() | st.floats(0.0, 1e3),
    st.none() | st.floats(-1.0, 1e3),
    st.integers(0, 2**32),
)
def test_plan_invariants(
    policy: RetryPolicy,
    attempt: int,
    status: int,
    method: str,
    repeat_safe: bool,
    now: float,
    budget: float | None,
    retry_after: float | None,
    seed: int,
) -> None:
    """A planned retry is retryable, allowed, within attempts and ends before the deadline."""
    deadline = None if budget is None else now + budget
    plan = plan_retry(
        policy,
        attempt=attempt,
        outcome=Outcome.from_status(status, retry_after=retry_after),
        method=method,
        repeat_safe=repeat_safe,
        now=now,
        deadline=deadline,
        rng=random.Random(seed),
    )
    if plan.retry:
        assert is_retryable_status(status)
        assert attempt < policy.attempts
        assert may_retry(method=method, repeat_safe=repeat_safe, sent=status != 429)
        assert deadline is None or now + plan.delay < deadline
        assert plan.delay >= max(retry_after or 0.0, 0.0)
    else:
        assert plan.reason is not None


@given(st.integers(400, 499).filter(lambda s: s not in (408, 429)), methods, st.booleans())
def test_4xx_never_retried(status: int, method: str, repeat_safe: bool) -> None:
    """A client error (other than 408/429) stops at once, whatever the method."""
    plan = _plan(Outcome.from_status(status), method=method, repeat_safe=repeat_safe)
    assert plan == RetryPlan.stop("not_retryable")


def test_success_stops() -> None:
    """A 2xx stops with reason success."""
    assert _plan(Outcome.from_status(201)) == RetryPlan.stop("success")


def test_attempts_count_the_first_try() -> None:
    """With attempts=5 the 4th failure retries and the 5th stops."""
    assert _plan(Outcome.from_status(503), attempt=4).retry
    assert _plan(Outcome.from_status(503), attempt=5) == RetryPlan.stop("attempts_exhausted")


def test_post_not_retried_unless_repeat_safe_or_unsent() -> None:
    """A sent POST stops; a repeat_safe POST or an unsent one (connect failure) retries."""
    sent = Outcome(error="reset", sent=True, retryable=True)
    unsent = Outcome(error="connect", sent=False, retryable=True)
    assert _plan(sent, method="POST") == RetryPlan.stop("not_repeat_safe")
    assert _plan(sent, method="POST", repeat_safe=True).retry
    assert _plan(unsent, method="POST").retry
    assert _plan(Outcome.from_status(503), method="PATCH") == RetryPlan.stop("not_repeat_safe")


def test_retry_never_passes_deadline() -> None:
    """A Retry-After beyond the deadline stops with reason deadline."""
    outcome = Outcome.from_status(429, retry_after=30.0)
    assert _plan(outcome, deadline=120.0) == RetryPlan.stop("deadline")
    assert _plan(outcome, deadline=131.0) == RetryPlan.after(30.0)


def test_outcome_from_executor_errors() -> None:
    """Executor errors map to outcomes: timeouts retryable+sent, details honoured, others final."""
    timeout = TimeoutRefusal("t", details={"stage": "request", "retryable": True, "sent": True})
    refused = UpstreamRefusal("c", details={"kind": "connect", "retryable": True, "sent": False})
    too_large = UpstreamRefusal("b", details={"kind": "too_large", "retryable": False})
    assert Outcome.from_error(timeout) == Outcome(error="timeout", sent=True, retryable=True)
    assert Outcome.from_error(refused) == Outcome(error="connect", sent=False, retryable=True)
    assert not Outcome.from_error(too_large).retryable
    assert not Outcome.from_error(BadRequestRefusal("x")).retryable
    assert _plan(Outcome.from_error(too_large)) == RetryPlan.stop("not_retryable")


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"base": 0.0}, {"cap": -1.0}, {"base": float("nan")}]
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    """A policy with no tries or a non-positive duration is refused."""
    with pytest.raises(ValueError, match="retry"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_budget_grants_the_floor_then_a_share_of_the_calls() -> None:
    """max(min_retries, budget x calls in flight): 3 with 10 calls, 4 with 20 at 20 %."""
    policy = RetryPolicy(budget=0.2, min_retries=3)
    budget = RetryBudget()
    budget.calls = 10
    assert [budget.try_retry(policy) for _ in range(4)] == [True, True, True, False]
    budget.calls = 20
    assert budget.try_retry(policy)
    assert not budget.try_retry(policy)
    assert (budget.retries, budget.refused) == (4, 2)
    budget.retries -= 1  # a retry's attempt ended
    assert budget.try_retry(policy)


@pytest.mark.parametrize("bad", [{"budget": 0.0}, {"budget": 1.5}, {"min_retries": -1}])
def test_retry_budget_settings_are_checked(bad: dict[str, float]) -> None:
    """A budget outside (0, 1] or a negative floor cannot be built."""
    with pytest.raises(ValueError, match=r"retry\.(budget|min_retries)"):
        RetryPolicy(**bad)  # type: ignore[arg-type]
