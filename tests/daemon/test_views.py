"""The daemon's views: what ``freeze_heap`` leaves the collector with once the daemon serves."""

from __future__ import annotations

import gc

from claykiln.daemon.views import GC_THRESHOLD, freeze_heap


def test_freeze_heap_freezes_and_raises_the_collection_threshold() -> None:
    """After start-up the live objects are frozen and young collections come at GC_THRESHOLD."""
    before = gc.get_threshold()
    try:
        frozen = freeze_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLD
        assert GC_THRESHOLD[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
