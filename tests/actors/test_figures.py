"""The call path's figures: histogram buckets and quantiles, exchange and call counts, counters
that never go down."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.figures import (
    BUCKETS,
    CallFigures,
    ExchangeFigures,
    LatencyHistogram,
    MonotonicCounters,
    status_label,
)


def test_observations_land_in_the_first_bucket_whose_bound_holds_them() -> None:
    """A bound is inclusive (Prometheus ``le``); past the last finite bound is +Inf."""
    histogram = LatencyHistogram()
    for seconds in (0.0005, 0.0006, 0.001, 1000.0, -1.0):
        histogram.observe(seconds)
    assert histogram.counts[0] == 2  # 0.0005 and a negative one clamped to 0
    assert histogram.counts[1] == 2  # 0.0006 and 0.001
    assert histogram.counts[-1] == 1
    assert histogram.total == 5
    assert histogram.cumulative()[-1] == (float("inf"), 5)


def test_quantile_interpolates_inside_the_bucket() -> None:
    """100 observations between 10 and 25 ms: p50 and p99 fall inside that bucket."""
    histogram = LatencyHistogram()
    for _ in range(100):
        histogram.observe(0.02)
    p50 = histogram.quantile(0.5)
    p99 = histogram.quantile(0.99)
    assert p50 is not None and p99 is not None
    assert 0.01 < p50 < p99 <= 0.025


def test_quantile_since_a_copy_sees_only_the_newer_observations() -> None:
    """A tick's window: slow calls before the copy do not weigh on the percentile after it."""
    histogram = LatencyHistogram()
    for _ in range(50):
        histogram.observe(5.0)
    before = histogram.copy()
    assert histogram.quantile(0.99, before) is None  # nothing since
    for _ in range(10):
        histogram.observe(0.0007)
    p99 = histogram.quantile(0.99, before)
    assert p99 is not None and p99 <= 0.001


def test_quantile_in_the_overflow_bucket_is_the_last_finite_bound() -> None:
    """An observation past 300 s has no upper bound: the estimate is 300 s."""
    histogram = LatencyHistogram()
    histogram.observe(1e6)
    assert histogram.quantile(0.5) == BUCKETS[-2]


@given(st.lists(st.floats(min_value=0, max_value=400), min_size=1, max_size=200))
def test_quantiles_are_ordered_and_bounded(samples: list[float]) -> None:
    """p50 <= p99 <= the bound of the largest observation's bucket."""
    histogram = LatencyHistogram()
    for seconds in samples:
        histogram.observe(seconds)
    p50, p99 = histogram.quantile(0.5), histogram.quantile(0.99)
    assert p50 is not None and p99 is not None
    assert 0 <= p50 <= p99 <= 300.0


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "2xx"), (204, "2xx"), (301, "3xx"), (404, "4xx"), (429, "429"), (503, "5xx")],
)
def test_status_labels(status: int, label: str) -> None:
    """An HTTP status becomes its class; 429 stays apart (it closes a gate)."""
    assert status_label(status) == label


def test_exchange_figures_count_per_upstream_and_outcome() -> None:
    """Exchanges, failures and durations are kept per upstream."""
    figures = ExchangeFigures()
    figures.record("clay", "2xx", failed=False, seconds=0.01)
    figures.record("clay", "5xx", failed=True, seconds=0.02)
    figures.record("other", "timeout", failed=True, seconds=5.0)
    assert figures.outcomes == {"clay": {"2xx": 1, "5xx": 1}, "other": {"timeout": 1}}
    assert figures.failures == {"clay": 1, "other": 1}
    assert figures.requests("clay") == 2
    assert figures.requests("unknown") == 0
    assert figures.durations["other"].total == 1


def test_call_figures_count_per_operation_and_outcome() -> None:
    """Answers are counted by (operation, outcome); durations by operation."""
    figures = CallFigures()
    figures.record("me", "ok", 0.001)
    figures.record("me", "ok", 0.002)
    figures.record("me", "breaker_open", 0.0)
    assert figures.outcomes == {("me", "ok"): 2, ("me", "breaker_open"): 1}
    assert figures.total() == 3
    assert figures.durations["me"].total == 3


def test_a_counter_whose_source_restarts_continues_from_its_total() -> None:
    """A source back at zero (a lane rebuilt by a reload) adds to what was exported."""
    counters = MonotonicCounters()
    assert counters.value(("c", "x"), 5) == 5
    assert counters.value(("c", "x"), 7) == 7
    assert counters.value(("c", "x"), 0) == 7
    assert counters.value(("c", "x"), 3) == 10
    assert counters.value(("c", "y"), 1) == 1  # series are apart


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=50))
def test_exported_counters_never_go_down(raws: list[int]) -> None:
    """Whatever the source reads, the exported value only grows."""
    counters = MonotonicCounters()
    values = [counters.value(("k",), raw) for raw in raws]
    assert values == sorted(values)
