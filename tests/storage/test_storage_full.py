"""Map full: the writer grows the map to its ceiling, then refuses only what does not fit."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from claykiln.actors.writer import Writer
from claykiln.storage import Delete, Put, Store, StoreFull, text_key

KIB = 1024
BIG = b"x" * (100 * KIB)


async def test_map_grows_then_storage_full_and_the_store_stays_usable(store_path: Path) -> None:
    """Writes grow the map up to max_map_size, then get StoreFull; reads, deletes and small
    writes keep working afterwards (the writer is alive)."""
    store = Store.open(store_path, map_size=256 * KIB, max_map_size=1024 * KIB)
    writer = Writer(store)
    written: list[bytes] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as actors:
            await actors.start(writer.run)
            full: StoreFull | None = None
            for n in range(50):
                key = text_key(f"big{n:02d}")
                try:
                    await writer.write([Put("cache", key, BIG)])
                except StoreFull as exc:
                    full = exc
                    break
                written.append(key)
            assert full is not None
            assert "max_map_size" in str(full)
            assert str(store_path) in str(full)
            assert writer.stats().map_grows == 2
            assert store.map_size == store.max_map_size == 1024 * KIB
            assert len(written) > 3
            # Reads go on at the ceiling.
            assert store.get("cache", written[0]) == BIG
            assert store.count("cache") == len(written)
            assert store.usage().ratio > 0.5
            # The writer is alive: deletes and a small write still commit.
            await writer.write([Delete("cache", key) for key in written[:3]])
            await writer.write([Put("jobs", b"small", {"ok": True})])
            await writer.aclose()
    assert store.get("jobs", b"small") == {"ok": True}
    assert store.count("cache") == len(written) - 3
    store.close()


async def test_at_the_ceiling_only_the_write_that_does_not_fit_fails(store_path: Path) -> None:
    """In one batch at the ceiling, the oversized write gets StoreFull, the rest commit."""
    store = Store.open(store_path, map_size=256 * KIB, max_map_size=256 * KIB)
    writer = Writer(store)
    outcomes: dict[str, str] = {}

    async def caller(name: str, value: bytes) -> None:
        try:
            await writer.write([Put("cache", text_key(name), value)])
            outcomes[name] = "committed"
        except StoreFull:
            outcomes[name] = "full"

    with trio.fail_after(20):
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as callers:
                callers.start_soon(caller, "small-1", b"a")
                callers.start_soon(caller, "huge", b"x" * (1024 * KIB))
                callers.start_soon(caller, "small-2", b"b")
                await trio.testing.wait_all_tasks_blocked()
                await actors.start(writer.run)
            await writer.aclose()
    assert outcomes == {"small-1": "committed", "huge": "full", "small-2": "committed"}
    stats = writer.stats()
    assert (stats.transactions, stats.asks, stats.failed, stats.map_grows) == (1, 2, 1, 0)
    assert store.get("cache", b"small-1") == b"a"
    assert store.get("cache", b"huge") is None
    store.close()


async def test_a_batch_too_big_for_the_map_commits_whole_after_growth(store_path: Path) -> None:
    """A batch too big for the map commits whole after growth; nobody sees StoreFull."""
    store = Store.open(store_path, map_size=256 * KIB, max_map_size=4096 * KIB)
    writer = Writer(store)
    with trio.fail_after(20):
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as callers:
                for n in range(8):
                    callers.start_soon(writer.write, [Put("cache", text_key(f"k{n}"), BIG)])
                await trio.testing.wait_all_tasks_blocked()
                await actors.start(writer.run)
            await writer.aclose()
    stats = writer.stats()
    assert (stats.asks, stats.failed, stats.transactions) == (8, 0, 1)
    assert stats.map_grows >= 1
    assert store.count("cache") == 8
    store.close()
