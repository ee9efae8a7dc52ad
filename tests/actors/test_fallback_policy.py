"""Fallback facts: staleness at each age boundary, cache keys, which failures fall back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.errors import (
    BadRequestRefusal,
    BreakerOpenRefusal,
    IdempotencyMismatchRefusal,
    LaneFullRefusal,
    RateLimitedRefusal,
    StorageFullRefusal,
    TimeoutRefusal,
    UnknownOperationRefusal,
    UpstreamRefusal,
)
from claykiln.actors.fallback_policy import (
    CachePolicy,
    Staleness,
    cache_key,
    fallback_result,
    falls_back,
    staleness,
)

POLICY = CachePolicy(fresh_for=60.0, stale_for=600.0, max_age=3600.0)


@pytest.mark.parametrize(
    ("age", "label"),
    [
        (-5.0, Staleness.FRESH),
        (0.0, Staleness.FRESH),
        (59.999, Staleness.FRESH),
        (60.0, Staleness.STALE),
        (599.999, Staleness.STALE),
        (600.0, Staleness.VERY_STALE),
        (3600.0, Staleness.VERY_STALE),
        (3600.001, None),
    ],
)
def test_staleness_at_each_boundary(age: float, label: Staleness | None) -> None:
    """fresh below fresh_for, stale below stale_for, very_stale up to max_age, then nothing."""
    assert staleness(age, POLICY) is label


@given(st.floats(0, 1e6), st.floats(0, 1e6))
def test_staleness_never_gets_fresher_with_age(a: float, b: float) -> None:
    """An older answer is never labelled fresher than a younger one."""
    order = {Staleness.FRESH: 0, Staleness.STALE: 1, Staleness.VERY_STALE: 2, None: 3}
    young, old = sorted((a, b))
    assert order[staleness(young, POLICY)] <= order[staleness(old, POLICY)]


def test_policy_ages_must_grow() -> None:
    """fresh_for <= stale_for <= max_age, each > 0, or the policy is refused."""
    with pytest.raises(ValueError, match="must grow"):
        CachePolicy(fresh_for=10, stale_for=5, max_age=60)
    with pytest.raises(ValueError, match="> 0"):
        CachePolicy(fresh_for=0, stale_for=5, max_age=60)


def test_cache_key_is_the_fingerprint_or_the_template() -> None:
    """No template: one entry per request; a template fills from path params, then the query."""
    assert cache_key("me", POLICY, fingerprint="ab", path_params=None, query=None) == "me\x00ab"
    templated = CachePolicy(key_template="{routine_id}/{page}")
    key = cache_key(
        "poll", templated, fingerprint="ab", path_params={"routine_id": "r1"}, query={"page": "2"}
    )
    assert key == "poll\x00r1/2"
    with pytest.raises(BadRequestRefusal, match="'page'"):
        cache_key("poll", templated, fingerprint="ab", path_params={"routine_id": "r"}, query={})


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (BreakerOpenRefusal("b"), True),
        (TimeoutRefusal("t"), True),
        (UpstreamRefusal("u"), True),
        (LaneFullRefusal("l"), True),
        (RateLimitedRefusal("r"), True),
        (BadRequestRefusal("x"), False),
        (UnknownOperationRefusal("x"), False),
        (IdempotencyMismatchRefusal("x"), False),
        (StorageFullRefusal("x"), False),
    ],
)
def test_only_upstream_failures_fall_back(error: object, expected: bool) -> None:
    """The upstream's failures fall back; the caller's mistakes and full storage do not."""
    assert falls_back(error) is expected  # type: ignore[arg-type]


def test_fallback_result_says_what_it_is() -> None:
    """The cached result plus fallback, staleness, age and the error that caused it."""
    cached = {"status": 200, "headers": {}, "body": {"ok": 1}, "attempts": 1, "duration_ms": 3.0}
    error = BreakerOpenRefusal("open", retry_after=3.0, details={"breaker": "clay"})
    out = fallback_result(cached, Staleness.STALE, 61.23456, error)
    assert out["body"] == {"ok": 1}
    assert (out["fallback"], out["staleness"], out["age"]) == (True, "stale", 61.235)
    assert out["error"] == {
        "code": "breaker_open",
        "message": "open",
        "retry_after": 3.0,
        "details": {"breaker": "clay"},
    }
    assert "fallback" not in cached
