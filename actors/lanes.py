"""Bulkhead lanes (stub: settings only; the actor is being written)."""

from __future__ import annotations

import attrs


@attrs.frozen
class LanePolicy:
    """One lane: ``concurrency`` callers at once, ``queue`` waiting, each at most ``max_wait`` s."""

    concurrency: int = 5
    queue: int = 50
    max_wait: float = 5.0
