"""Retry policy (stub: settings only; the module is being written)."""

from __future__ import annotations

import attrs


@attrs.frozen
class RetryPolicy:
    """``attempts`` counts every try, the first included; backoff doubles from ``base`` to ``cap``."""

    attempts: int = 3
    base: float = 0.25
    cap: float = 10.0
