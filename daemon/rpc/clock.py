"""The run's clock in one call, for the request path.

``trio.current_time()`` reaches the clock through two Python frames (the generated wrapper and
the runner's method) before the clock's own ``current_time``; the request path reads the time
several times per request (the reader's turn, its charge, the replies' progress), and a
replay's whole path is about 200 Python calls. An object made inside ``trio.run`` keeps
``run_clock()`` and calls it instead: the same clock (``MockClock`` in tests), one frame.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["run_clock"]


def run_clock() -> Callable[[], float]:
    """The current run's ``clock.current_time`` (what ``trio.current_time`` returns, without
    the two frames in between). Call it inside ``trio.run``; the method stays bound to that
    run's clock."""
    return trio.lowlevel.current_clock().current_time
