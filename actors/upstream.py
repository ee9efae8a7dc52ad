"""Upstream executor (stub: settings only; the actor is being written)."""

from __future__ import annotations

import attrs


@attrs.frozen
class TimeoutClasses:
    """The timeout hierarchy in seconds: an operation names one class (or gives seconds)."""

    connect: float = 5.0
    request: float = 30.0
    upload: float = 120.0
    long_poll: float = 300.0
