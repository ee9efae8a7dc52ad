"""The group-commit writer: batching, durability, ordering, shutdown. Real clock (worker thread)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from claykiln.actors.writer import HeldOps, Writer
from claykiln.storage import Encoded, Put, StorageClosed, StorageError, Store, pack, text_key
from claykiln.storage.ops import PreparedOp


async def test_concurrent_writes_are_group_committed_and_durable(store_path: Path) -> None:
    """64 tasks x 20 acknowledged writes are all on disk after reopen, in fewer transactions."""
    tasks, per_task = 64, 20
    store = Store.open(store_path)
    writer = Writer(store)
    with trio.fail_after(30):
        async with trio.open_nursery() as actors:
            await actors.start(writer.run)

            async def one_task(task: int) -> None:
                for i in range(per_task):
                    await writer.write([Put("jobs", text_key(f"{task}-{i}"), [task, i])])

            async with trio.open_nursery() as callers:
                for task in range(tasks):
                    callers.start_soon(one_task, task)
            await writer.aclose()
    store.close()
    stats = writer.stats()
    assert stats.asks == tasks * per_task
    assert stats.failed == 0
    assert stats.transactions < tasks * per_task
    reopened = Store.open(store_path)
    try:
        assert reopened.count("jobs") == tasks * per_task
        for task in range(tasks):
            for i in range(per_task):
                assert reopened.get("jobs", text_key(f"{task}-{i}")) == [task, i]
    finally:
        reopened.close()


async def test_everything_queued_goes_into_one_transaction(store: Store) -> None:
    """Asks queued before the actor wakes are drained and committed in ONE transaction."""
    writer = Writer(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as callers:
                for n in range(10):
                    callers.start_soon(writer.write, [Put("jobs", text_key(f"k{n}"), n)])
                await trio.testing.wait_all_tasks_blocked()
                assert writer.queued == 10
                await actors.start(writer.run)
            await writer.aclose()
    assert writer.stats().transactions == 1
    assert writer.stats().asks == 10
    assert [v for _, v in store.items("jobs")] == list(range(10))


async def test_ops_of_one_write_are_atomic_and_writes_apply_in_order(
    store: Store, writer: Writer
) -> None:
    """Later asks overwrite earlier ones in queue order, within and across batches."""
    with trio.fail_after(10):
        for n in range(5):
            assert writer.write_nowait([Put("gate", b"g", n), Put("gate", b"h", -n)])
        await writer.write([])
    assert (store.get("gate", b"g"), store.get("gate", b"h")) == (4, -4)


async def test_write_nowait_is_durable_after_a_later_write_returns(store_path: Path) -> None:
    """Fire-and-forget writes are on disk once the barrier write([]) has returned."""
    store = Store.open(store_path)
    writer = Writer(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as actors:
            await actors.start(writer.run)
            for n in range(100):
                assert writer.write_nowait([Put("breakers", text_key(f"b{n}"), {"n": n})])
            await writer.write([])
            actors.cancel_scope.cancel()
    store.close()
    reopened = Store.open(store_path)
    assert reopened.count("breakers") == 100
    reopened.close()


async def test_aclose_flushes_everything_queued(store_path: Path) -> None:
    """aclose() stops intake but commits every ask already queued before returning."""
    store = Store.open(store_path)
    writer = Writer(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as actors:
            await actors.start(writer.run)
            for n in range(200):
                writer.write_nowait([Put("jobs", text_key(f"j{n:03d}"), n)])
            await writer.aclose()
    store.close()
    reopened = Store.open(store_path)
    assert reopened.count("jobs") == 200
    reopened.close()


async def test_write_after_close_raises_storage_closed(store: Store, writer: Writer) -> None:
    """Once closed, write and write_nowait raise StorageClosed at once instead of hanging."""
    with trio.fail_after(10):
        await writer.aclose()
        await writer.aclose()
        with pytest.raises(StorageClosed, match="closed"):
            await writer.write([Put("jobs", b"k", 1)])
    with pytest.raises(StorageClosed):
        writer.write_nowait([Put("jobs", b"k", 1)])
    assert store.get("jobs", b"k") is None


async def test_full_inbox_refuses_nowait_and_blocked_senders_fail_on_close(store: Store) -> None:
    """write_nowait returns False on a full inbox; a sender waiting for room gets StorageClosed."""
    writer = Writer(store, inbox_size=2)
    outcomes: list[str] = []

    async def blocked_writer() -> None:
        try:
            await writer.write([Put("jobs", b"late", 1)])
        except StorageClosed:
            outcomes.append("closed")

    with trio.fail_after(10):
        assert writer.write_nowait([Put("jobs", b"a", 1)])
        assert writer.write_nowait([Put("jobs", b"b", 2)])
        assert not writer.write_nowait([Put("jobs", b"c", 3)])
        async with trio.open_nursery() as callers:
            callers.start_soon(blocked_writer)
            await trio.testing.wait_all_tasks_blocked()
            await writer.aclose()
    assert outcomes == ["closed"]
    assert writer.stats().nowait_failed == 2
    assert store.count("jobs") == 0


async def test_invalid_op_fails_only_its_caller(store: Store) -> None:
    """An invalid op raises in its own caller, queues nothing, and the others still commit."""
    writer = Writer(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as callers:
                for n in range(3):
                    callers.start_soon(writer.write, [Put("jobs", text_key(f"ok{n}"), n)])
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(StorageError, match="unknown table 'jobz'"):
                    await writer.write([Put("jobs", b"x", 1), Put("jobz", b"y", 2)])
                await actors.start(writer.run)
            await writer.aclose()
    assert store.count("jobs") == 3
    assert store.get("jobs", b"x") is None
    assert writer.stats().transactions == 1


async def test_encoded_ops_are_queued_as_they_are(store: Store) -> None:
    """Ops their maker encoded skip ``Store.prepare``: the writer stores their bytes as they
    are. One that breaks what ``prepare`` would have checked (a key over LMDB's limit) fails
    in the commit, and only its own write fails: the batch is re-run ask by ask."""
    writer = Writer(store)
    good = Encoded((PreparedOp("jobs", b"enc", pack({"n": 1})), PreparedOp("jobs", b"gone", None)))
    bad = Encoded((PreparedOp("jobs", b"k" * 600, pack(2)),))
    failed: list[StorageError] = []

    async def write_bad() -> None:
        try:
            await writer.write(bad)
        except StorageError as exc:
            failed.append(exc)

    store_ops = store.prepare([Put("jobs", b"gone", 0)])
    assert store.commit_group([store_ops]) is None
    with trio.fail_after(10):
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as callers:
                callers.start_soon(writer.write, good)
                callers.start_soon(write_bad)
                callers.start_soon(writer.write, [Put("jobs", b"plain", 3)])
                await trio.testing.wait_all_tasks_blocked()
                assert writer.queued == 3
                await actors.start(writer.run)
            await writer.aclose()
    assert store.get("jobs", b"enc") == {"n": 1}
    assert store.get("jobs", b"gone") is None
    assert store.get("jobs", b"plain") == 3
    assert len(failed) == 1 and store.count("jobs") == 2
    assert writer.stats().failed == 1


async def test_cancelled_waiting_caller_does_not_break_the_batch(store: Store) -> None:
    """A caller cancelled after queueing leaves the others' batch intact (its write may commit)."""
    writer = Writer(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as callers:
                doomed = trio.CancelScope()

                async def cancelled_caller() -> None:
                    with doomed:
                        await writer.write([Put("jobs", b"cancelled", 0)])

                callers.start_soon(writer.write, [Put("jobs", b"other-1", 1)])
                callers.start_soon(cancelled_caller)
                callers.start_soon(writer.write, [Put("jobs", b"other-2", 2)])
                await trio.testing.wait_all_tasks_blocked()
                assert writer.queued == 3
                doomed.cancel()
                await trio.testing.wait_all_tasks_blocked()
                await actors.start(writer.run)
            await writer.write([])
            await writer.aclose()
    assert store.get("jobs", b"other-1") == 1
    assert store.get("jobs", b"other-2") == 2
    assert store.get("jobs", b"cancelled") == 0
    assert doomed.cancelled_caught
    assert writer.stats().failed == 0
    assert writer.stats().transactions == 2


async def test_pending_asks_fail_when_the_actor_is_cancelled(store: Store) -> None:
    """Asks queued when the writer is cancelled fail with StorageClosed instead of hanging."""
    writer = Writer(store)
    outcomes: list[str] = []

    async def caller(n: int) -> None:
        try:
            await writer.write([Put("jobs", text_key(f"k{n}"), n)])
            outcomes.append("committed")
        except StorageClosed as exc:
            outcomes.append(str(exc))

    with trio.fail_after(10):
        async with trio.open_nursery() as callers:
            for n in range(3):
                callers.start_soon(caller, n)
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await writer.run()
        with pytest.raises(StorageClosed):
            await writer.write([Put("jobs", b"after", 1)])
    assert outcomes == ["the writer was cancelled before committing this write"] * 3
    assert store.count("jobs") == 0


async def test_a_writer_runs_once(store: Store, writer: Writer) -> None:
    """Running the same Writer a second time is refused."""
    with trio.fail_after(10), pytest.raises(RuntimeError, match="already ran"):
        await writer.run()


def test_held_ops_keep_the_latest_op_per_key_oldest_first() -> None:
    """HeldOps: a key held again keeps its newer op and moves to the end; take empties it."""
    held = HeldOps()
    a1, b1, a2 = (
        PreparedOp("t", b"a", b"1"),
        PreparedOp("t", b"b", b"1"),
        PreparedOp("t", b"a", b"2"),
    )
    assert held.hold([a1, b1]) == 0
    assert held.hold([a2]) == 0
    assert len(held) == 2
    assert held.take() == (b1, a2)
    assert len(held) == 0


def test_held_ops_forget_superseded_keys_and_drop_the_oldest_past_the_limit() -> None:
    """HeldOps: a committed op of a held key drops it; past the limit the oldest go first."""
    held = HeldOps(limit=2)
    ops = [PreparedOp("t", bytes([n]), None) for n in range(3)]
    assert held.hold(ops) == 1  # the first one was dropped
    held.supersede([PreparedOp("t", bytes([1]), b"new"), PreparedOp("u", bytes([2]), b"x")])
    assert held.take() == (ops[2],)
