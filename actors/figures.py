"""Counters and latency histograms kept on the call path: a dict lookup, an add and a bisect.

- ``LatencyHistogram``: cumulative counts per bucket (upper bounds ``BUCKETS``, in seconds,
  the last one ``+Inf``) and the sum of the observations. ``quantile(q, since)`` estimates a
  percentile from the observations made after the ``since`` copy (a tick's window), by linear
  interpolation inside the bucket it falls in.
- ``ExchangeFigures``: per upstream, the HTTP exchanges by outcome label (``2xx`` ... ``5xx``,
  ``timeout``, ``connect_error``, ``transport_error``), how many the breaker counts as failures,
  and their durations. The pipeline records each exchange (``actors/pipeline.py``).
- ``CallFigures``: per operation, the ``call`` requests by outcome and their durations. The
  ``call`` method records each answer (``daemon/methods/call.py``).

- ``MonotonicCounters``: exported counters that never go down, even when a source restarts.

Everything only grows for the life of the process (readers take ``copy()`` snapshots and diff
them); the set of keys is bounded by the config (upstreams, operations) and by the fixed label
sets above. Only the trio thread touches them: no locks.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

__all__ = [
    "BUCKETS",
    "CallFigures",
    "ExchangeFigures",
    "LatencyHistogram",
    "MonotonicCounters",
    "status_label",
]

# Upper bounds in seconds: sub-millisecond replays up to the 300 s long-poll timeout class.
BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    float("inf"),
)


class LatencyHistogram:
    """Observations in ``BUCKETS`` (``counts[i]``: those <= ``BUCKETS[i]`` and above the bound
    before; not cumulative) and their sum."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += 1
        self.sum += seconds

    def copy(self) -> LatencyHistogram:
        out = LatencyHistogram()
        out.counts = list(self.counts)
        out.total = self.total
        out.sum = self.sum
        return out

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` per bucket, as Prometheus exposes them."""
        out = []
        running = 0
        for bound, count in zip(BUCKETS, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def quantile(self, q: float, since: LatencyHistogram | None = None) -> float | None:
        """The ``q`` quantile (0 < q <= 1) in seconds of the observations made after ``since``
        (all of them when None); None when there were none. Inside a bucket the observations
        are taken as evenly spread; in the ``+Inf`` bucket the answer is the last finite bound."""
        counts = self.counts
        if since is not None:
            counts = [now - then for now, then in zip(counts, since.counts, strict=True)]
        total = sum(counts)
        if total <= 0:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(counts):
            if count and seen + count >= rank:
                upper = BUCKETS[index]
                lower = BUCKETS[index - 1] if index else 0.0
                if upper == float("inf"):
                    return lower
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
        return BUCKETS[-2]


def status_label(status: int) -> str:
    """An HTTP status as an outcome label: ``429`` apart (it closes a gate), else its class."""
    if status == 429:
        return "429"
    return f"{min(max(status // 100, 1), 5)}xx"


class ExchangeFigures:
    """HTTP exchanges per upstream (see the module docstring)."""

    __slots__ = ("durations", "failures", "outcomes")

    def __init__(self) -> None:
        self.outcomes: dict[str, dict[str, int]] = {}  # upstream -> label -> count
        self.failures: dict[str, int] = {}  # upstream -> exchanges the breaker counts as failed
        self.durations: dict[str, LatencyHistogram] = {}

    def record(self, upstream: str, label: str, *, failed: bool, seconds: float) -> None:
        """One exchange of ``upstream`` ended with ``label`` after ``seconds``."""
        outcomes = self.outcomes.get(upstream)
        if outcomes is None:
            outcomes = self.outcomes[upstream] = {}
            self.failures[upstream] = 0
            self.durations[upstream] = LatencyHistogram()
        outcomes[label] = outcomes.get(label, 0) + 1
        if failed:
            self.failures[upstream] += 1
        self.durations[upstream].observe(seconds)

    def requests(self, upstream: str) -> int:
        """Exchanges of ``upstream`` so far."""
        return sum(self.outcomes.get(upstream, {}).values())


class CallFigures:
    """``call`` requests per operation (see the module docstring)."""

    __slots__ = ("durations", "outcomes")

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}  # (operation, outcome) -> count
        self.durations: dict[str, LatencyHistogram] = {}  # operation -> seconds to the answer

    def record(self, operation: str, outcome: str, seconds: float) -> None:
        """One ``call`` of ``operation`` was answered with ``outcome`` after ``seconds``."""
        key = (operation, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        histogram = self.durations.get(operation)
        if histogram is None:
            histogram = self.durations[operation] = LatencyHistogram()
        histogram.observe(seconds)

    def total(self) -> int:
        """Calls answered so far."""
        return sum(self.outcomes.values())


class MonotonicCounters:
    """Counters exported as only going up, whatever the source does: a source that restarts
    from zero (a lane rebuilt by a reload) continues from the total it had reached.

    ``value(key, raw)`` is the exported value of series ``key`` whose source now reads ``raw``;
    a series whose source is gone reads 0, so it keeps its total (``keys_of`` lists them).
    """

    __slots__ = ("_last", "_offset")

    def __init__(self) -> None:
        self._last: dict[tuple[str, ...], float] = {}
        self._offset: dict[tuple[str, ...], float] = {}

    def keys_of(self, name: str) -> list[tuple[str, ...]]:
        """Every series key seen whose first element is ``name``."""
        return [key for key in self._last if key and key[0] == name]

    def value(self, key: tuple[str, ...], raw: float) -> float:
        last = self._last.get(key)
        if last is not None and raw < last:
            self._offset[key] = self._offset.get(key, 0.0) + last
        self._last[key] = raw
        return raw + self._offset.get(key, 0.0)
