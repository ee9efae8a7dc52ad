"""``Writer.write_then``: writes completed by a callback in the writer's task. Real clock (the
writer commits in a worker thread), real LMDB."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from claykiln.actors.writer import Writer
from claykiln.storage import Put, StorageClosed, StorageError, Store, StoreFull, text_key


async def test_done_is_called_after_the_commit_with_none(store: Store, writer: Writer) -> None:
    """``done(None)`` comes once the ops are committed (readable), in queue order with waited
    writes, and asks of one wake share one transaction."""
    seen: list[tuple[int, object, bool]] = []

    def done_for(n: int) -> object:
        def done(error: StorageError | None) -> None:
            seen.append((n, error, store.get("jobs", text_key(f"k{n}")) == n))

        return done

    with trio.fail_after(10):
        before = writer.stats().transactions
        for n in range(5):
            assert writer.write_then([Put("jobs", text_key(f"k{n}"), n)], done_for(n))
        await writer.write([])  # a barrier: everything queued before it is committed
    assert seen == [(n, None, True) for n in range(5)]
    assert writer.stats().transactions - before == 1
    assert writer.stats().asks == 6


async def test_a_write_that_cannot_commit_gets_its_error_and_the_others_commit(
    store_path: Path,
) -> None:
    """An ask the map cannot hold (at its ceiling) gets ``done(StoreFull)``; the ask queued
    beside it still commits and gets ``done(None)``."""
    store = Store.open(store_path, map_size=1 << 20, max_map_size=1 << 20)
    writer = Writer(store)
    seen: dict[str, StorageError | None] = {}
    try:
        assert writer.write_then([Put("jobs", b"small", 1)], lambda e: seen.update(small=e))
        too_big = [Put("jobs", b"big", b"x" * (2 << 20))]
        assert writer.write_then(too_big, lambda e: seen.update(big=e))
        with trio.fail_after(10):
            async with trio.open_nursery() as actors:
                await actors.start(writer.run)
                await writer.aclose()
        assert seen["small"] is None
        assert isinstance(seen["big"], StoreFull)
        assert store.get("jobs", b"small") == 1
        assert store.get("jobs", b"big") is None
    finally:
        store.close()


async def test_full_inbox_returns_false_and_never_calls_done(store: Store) -> None:
    """Nothing is queued when the inbox is full; the caller falls back to ``write``."""
    writer = Writer(store, inbox_size=1)
    called: list[object] = []
    assert writer.write_then([Put("jobs", b"a", 1)], called.append)
    assert not writer.write_then([Put("jobs", b"b", 2)], called.append)
    with trio.fail_after(10):
        async with trio.open_nursery() as actors:
            await actors.start(writer.run)
            await writer.aclose()
    assert called == [None]
    assert store.get("jobs", b"b") is None


async def test_a_stopped_writer_fails_queued_callbacks_and_refuses_new_ones(
    store_path: Path,
) -> None:
    """Asks queued when the actor is cancelled get ``done(StorageClosed)``; after that,
    ``write_then`` raises StorageClosed."""
    store = Store.open(store_path)
    writer = Writer(store)
    seen: list[StorageError | None] = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as actors:
                await actors.start(writer.run)
                actors.cancel_scope.cancel()
                assert writer.write_then([Put("jobs", b"a", 1)], seen.append)
        assert len(seen) == 1 and isinstance(seen[0], StorageClosed)
        try:
            writer.write_then([Put("jobs", b"b", 1)], seen.append)
        except StorageClosed:
            pass
        else:
            raise AssertionError("write_then on a stopped writer must raise StorageClosed")
        assert len(seen) == 1
    finally:
        store.close()
