"""The fallback cache actor over a real LMDB store and writer: bounds, eviction order, purge,
totals across restarts (real clock: the writer commits in a worker thread)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from claykiln.actors.fallback import CacheBounds, FallbackCache
from claykiln.actors.writer import Writer
from claykiln.storage import Store


@asynccontextmanager
async def running(
    path: Path, bounds: CacheBounds, wall: trio.testing.MockClock
) -> AsyncIterator[FallbackCache]:
    store = Store.open(path)
    writer = Writer(store)
    cache = FallbackCache(store, writer, bounds, wall_clock=wall.current_time)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(cache.run)
            yield cache
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def answer(n: int, size: int = 10) -> dict[str, Any]:
    return {"status": 200, "headers": {}, "body": "x" * size, "n": n}


async def settle(cache: FallbackCache) -> None:
    await cache.purge("no-such-operation")  # handled after everything remembered before it


async def test_the_oldest_entries_go_first_past_max_entries(store_path: Path) -> None:
    """With room for 3, five answers keep the newest three; a refreshed one counts as new."""
    wall = trio.testing.MockClock()
    with trio.fail_after(10):
        async with running(store_path, CacheBounds(max_entries=3), wall) as cache:
            for n in range(4):
                wall.jump(1)
                cache.remember(f"op\x00k{n}", answer(n))
                await settle(cache)
            wall.jump(1)
            cache.remember("op\x00k1", answer(11))  # k1 is refreshed: now the newest
            await settle(cache)
            wall.jump(1)
            cache.remember("op\x00k4", answer(4))
            await settle(cache)
            kept = {a.key: a.result["n"] for a in cache.entries()}
            stats = cache.stats()
    assert kept == {"op\x00k1": 11, "op\x00k3": 3, "op\x00k4": 4}
    assert (stats["entries"], stats["evicted"]) == (3, 2)


async def test_max_bytes_binds_and_an_oversized_answer_is_not_kept(store_path: Path) -> None:
    """Bytes are the stored msgpack; past the limit the oldest go; one alone too big is refused."""
    wall = trio.testing.MockClock()
    with trio.fail_after(10):
        async with running(store_path, CacheBounds(max_bytes=1000), wall) as cache:
            for n in range(5):
                wall.jump(1)
                cache.remember(f"op\x00k{n}", answer(n, size=250))
                await settle(cache)
            cache.remember("op\x00huge", answer(9, size=2000))
            await settle(cache)
            stats = cache.stats()
            keys = [a.key for a in cache.entries()]
    assert stats["bytes"] <= 1000 and stats["too_large"] == 1
    assert keys == ["op\x00k2", "op\x00k3", "op\x00k4"]


async def test_totals_and_answers_survive_a_restart(store_path: Path) -> None:
    """Entries and the byte total are read back at start, not recounted by a scan."""
    wall = trio.testing.MockClock()
    with trio.fail_after(10):
        async with running(store_path, CacheBounds(), wall) as cache:
            cache.remember("op\x00a", answer(1))
            cache.remember("other\x00b", answer(2))
            await settle(cache)
            before = cache.stats()
        async with running(store_path, CacheBounds(), wall) as cache:
            after = cache.stats()
            found = cache.lookup("op\x00a")
    assert (
        (after["entries"], after["bytes"])
        == (before["entries"], before["bytes"])
        == (2, before["bytes"])
    )
    assert before["bytes"] > 0
    assert found is not None and found.result["n"] == 1


async def test_purge_one_operation_or_all(store_path: Path) -> None:
    """purge(op) deletes that operation's answers; purge() the rest; totals follow."""
    wall = trio.testing.MockClock()
    with trio.fail_after(10):
        async with running(store_path, CacheBounds(), wall) as cache:
            for n in range(3):
                cache.remember(f"op\x00{n}", answer(n))
            cache.remember("other\x00x", answer(9))
            await settle(cache)
            assert await cache.purge("op") == 3
            assert [a.key for a in cache.entries()] == ["other\x00x"]
            assert await cache.purge() == 1
            stats = cache.stats()
    assert (stats["entries"], stats["bytes"]) == (0, 0)


@pytest.mark.parametrize("operation", ["op", None])
async def test_entries_lists_by_operation(store_path: Path, operation: str | None) -> None:
    """entries(op) stops at the operation's last key; entries() lists everything."""
    wall = trio.testing.MockClock()
    with trio.fail_after(10):
        async with running(store_path, CacheBounds(), wall) as cache:
            cache.remember("op\x00a", answer(1))
            cache.remember("opx\x00b", answer(2))
            await settle(cache)
            keys = [a.key for a in cache.entries(operation)]
    assert keys == (["op\x00a"] if operation else ["op\x00a", "opx\x00b"])
