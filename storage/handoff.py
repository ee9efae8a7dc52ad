"""Handing the GIL to the storage writer's thread while it applies a transaction's puts.

Why: py-lmdb releases the GIL around every put, so a commit of ~100 puts takes the GIL back
~100 times. Beside a busy trio thread that itself drops and retakes the GIL at every system
call, the worker thread loses nearly every one of those races: CPython only forces a switch
after a whole switch interval with no switch at all, and the busy thread's own drops keep
resetting it. Measured under the ``submit`` load (docs/performance.md, "The GIL hand-off to
the commit thread"): a commit's worker waited ~2.3 ms to start and took ~2 ms for puts that
take ~0.2 ms alone, and the trio thread idled a quarter of the time waiting for commits.

So: the writer asks (``request``), hands the transaction to its thread, and gives at once
(``give``): the trio thread blocks with the GIL released until the worker has applied its
puts (``release``, called before the commit's write and fsync, which need no GIL) or
``HANDOFF_TIMEOUT`` passed. One deliberate hand-over per transaction instead of a contested
one per put. ``give`` is a no-op when nothing was asked, and the worker's ``release`` is
idempotent, so a commit that fails early never leaves the trio thread waiting past the
timeout.

Given at once rather than at the poller's next safe point (as until 2026-12-06): waiting for
a safe point, two commits in three were given no hand-over at all (the worker finished
first, fighting the trio thread for the GIL at every put: ~22 futex calls a commit on each
thread). Given at once, the trio thread also waits for the worker to wake (~45 us; the
puts take ~55), but with the ops encoded by their makers (``Encoded``) a keyed call costs the
daemon ~20 us less and the keyed ratio went from a median of 0.77 to 0.82; durable submits,
whose transactions hold more puts, moved by less than the noise (docs/performance.md, "The
hand-over at once").
"""

from __future__ import annotations

import threading
from typing import Final

__all__ = ["HANDOFF", "HANDOFF_TIMEOUT", "GilHandoff"]

HANDOFF_TIMEOUT: Final = 0.002  # seconds the trio thread waits for a worker's puts at most


class GilHandoff:
    """One pending request of a worker thread for an uncontested GIL (see the module card)."""

    def __init__(self) -> None:
        self.wanted = False
        self._done = threading.Event()
        self._done.set()
        self.given = 0  # hand-overs made (for probes and tests)

    def request(self) -> None:
        """The trio thread is about to hand a transaction to the worker thread."""
        self._done.clear()
        self.wanted = True

    def release(self) -> None:
        """The worker applied its puts (or failed): the trio thread may go on."""
        self.wanted = False
        self._done.set()

    def give(self, timeout: float = HANDOFF_TIMEOUT) -> None:
        """At a safe point of the trio thread: if a worker asked, wait (GIL released) until it
        released or ``timeout`` passed."""
        if self.wanted:
            self.wanted = False  # asked once, given once: a timeout does not make it wait again
            self.given += 1
            self._done.wait(timeout)


HANDOFF: Final = GilHandoff()
