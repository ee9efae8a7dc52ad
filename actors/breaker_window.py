"""The breaker's rolling window: counts of the last ``window`` seconds in time buckets (pure)."""

from __future__ import annotations

import math

__all__ = ["RollingWindow"]


class RollingWindow:
    """Counts of the last ``window`` seconds in ``buckets`` buckets (the newest one partial)."""

    __slots__ = (
        "_buckets",
        "_counts",
        "_head",
        "_width",
        "_window",
        "calls",
        "failures",
        "slow_calls",
    )

    def __init__(self, window: float, buckets: int) -> None:
        self._window = window
        self._width = window / buckets
        self._buckets = buckets
        self._counts = [[0, 0, 0] for _ in range(buckets)]  # calls, failures, slow per bucket
        self._head: int | None = None  # absolute index of the newest bucket
        self.calls = 0
        self.failures = 0
        self.slow_calls = 0

    def geometry(self) -> tuple[float, int]:
        return self._window, self._buckets

    def advance(self, now: float) -> None:
        """Expire buckets older than the window; time that goes backwards stays in the newest."""
        index = math.floor(now / self._width)
        if self._head is None:
            self._head = index
            return
        if index <= self._head:
            return
        for step in range(1, min(index - self._head, self._buckets) + 1):
            bucket = self._counts[(self._head + step) % self._buckets]
            self.calls -= bucket[0]
            self.failures -= bucket[1]
            self.slow_calls -= bucket[2]
            bucket[0] = bucket[1] = bucket[2] = 0
        self._head = index

    def add(self, now: float, *, failed: bool, slow: bool) -> None:
        """Count one completed call at ``now``."""
        self.advance(now)
        assert self._head is not None
        bucket = self._counts[self._head % self._buckets]
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.calls += 1
        self.failures += failed
        self.slow_calls += slow
