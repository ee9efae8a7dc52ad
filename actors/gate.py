"""Rate gate (stub: settings only; the actor is being written)."""

from __future__ import annotations

import attrs


@attrs.frozen
class RatePolicy:
    """Token bucket per upstream; ``per_second`` refill, ``burst`` capacity."""

    per_second: float = 10.0
    burst: int = 20
    max_retry_after: float = 600.0
