"""Shared fixtures: a real LMDB store in tmp_path, and a running storage writer on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from claykiln.actors.writer import Writer
from claykiln.storage import Store


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
