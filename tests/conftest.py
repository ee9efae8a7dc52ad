"""Shared fixtures: a real LMDB store in tmp_path, and a running storage writer on it; and the
hypothesis settings every property test runs with."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, settings

from claykiln.actors.writer import Writer
from claykiln.storage import Store

# Hypothesis times each example in real seconds (a 200 ms deadline by default, and its too_slow
# health check on generating them): on a loaded machine a scheduling stall fails a property
# that held. A hang is still bounded by pytest-timeout.
settings.register_profile("claykiln", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("claykiln")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(store_path: Path) -> Iterator[Store]:
    opened = Store.open(store_path)
    yield opened
    opened.close()


@pytest.fixture
async def writer(store: Store) -> AsyncIterator[Writer]:
    """A started writer on the real clock (it commits in a worker thread)."""
    running = Writer(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(running.run)
        yield running
        with trio.fail_after(10):
            await running.aclose()
