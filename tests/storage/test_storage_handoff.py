"""The GIL hand-over to the storage writer's thread (storage/handoff.py), with real threads and
a real store: the trio thread waits for the worker's puts only when asked, never past the
timeout, and never on a commit that failed."""

from __future__ import annotations

import threading

import pytest
import trio

from claykiln.actors.writer import Writer
from claykiln.storage import Put, StorageClosed, Store
from claykiln.storage.handoff import HANDOFF, GilHandoff


def test_give_without_a_request_does_not_wait() -> None:
    handoff = GilHandoff()
    handoff.give(timeout=60)  # would hang the test if it waited
    assert handoff.given == 0


def test_give_waits_for_the_workers_release() -> None:
    """Asked, the trio side blocks (GIL released) until the worker released: the worker's work
    is done by the time ``give`` returns."""
    handoff = GilHandoff()
    done: list[str] = []
    started = threading.Event()

    def worker() -> None:
        started.wait(10)
        done.append("puts")
        handoff.release()

    thread = threading.Thread(target=worker)
    thread.start()
    handoff.request()
    started.set()
    handoff.give(timeout=60)
    assert done == ["puts"] and handoff.given == 1 and not handoff.wanted
    thread.join(10)


def test_a_request_nobody_releases_costs_one_timeout_only() -> None:
    handoff = GilHandoff()
    handoff.request()
    handoff.give(timeout=0.01)  # no worker: returns after the timeout
    assert not handoff.wanted and handoff.given == 1
    handoff.give(timeout=60)  # asked once, given once: no second wait
    assert handoff.given == 1


def test_a_failed_commit_releases_the_trio_thread(store: Store) -> None:
    """A commit that cannot even begin (closed store) still releases: nobody waits on it."""
    store.close()
    HANDOFF.request()
    assert isinstance(store.commit_group([]), StorageClosed)
    assert not HANDOFF.wanted
    HANDOFF.give(timeout=60)  # nothing asked any more


def test_commit_group_releases_after_the_puts_before_the_commit(store: Store) -> None:
    """The release comes once every put is applied; the write is durable when commit_group
    returns."""
    seen: list[bool] = []
    original = HANDOFF.release

    def release() -> None:
        seen.append(True)
        original()

    ops = store.prepare([Put("jobs", b"handoff-test", {"n": 1})])
    HANDOFF.request()
    try:
        HANDOFF.release = release  # type: ignore[method-assign]
        assert store.commit_group([ops]) is None
    finally:
        HANDOFF.release = original  # type: ignore[method-assign]
    assert len(seen) >= 1 and not HANDOFF.wanted
    assert store.get("jobs", b"handoff-test") == {"n": 1}


async def test_the_writer_commits_through_its_own_thread(store: Store, writer: Writer) -> None:
    """Writes through the writer (its thread hand-off asked for each commit) are durable and
    readable; the trio thread was never left asked once they are done."""
    with trio.fail_after(10):
        for n in range(20):
            await writer.write([Put("jobs", b"k%d" % n, {"n": n})])
    assert [store.get("jobs", b"k%d" % n) for n in range(20)] == [{"n": n} for n in range(20)]
    assert not HANDOFF.wanted


async def test_the_writer_gives_the_hand_over_as_it_hands_a_commit_over(
    store: Store, writer: Writer
) -> None:
    """Each transaction the writer hands to its thread is given its hand-over in the same step
    (not at some later safe point of the loop): one per transaction, none left asked."""
    given, transactions = HANDOFF.given, writer.stats().transactions
    asked_between: list[bool] = []
    original = trio.lowlevel.start_thread_soon

    def start_thread_soon(*args: object, **kwargs: object) -> None:
        asked_between.append(HANDOFF.wanted)  # asked before the worker can release
        original(*args, **kwargs)  # type: ignore[arg-type]

    with trio.fail_after(10):
        trio.lowlevel.start_thread_soon = start_thread_soon  # type: ignore[assignment]
        try:
            for n in range(5):
                await writer.write([Put("jobs", b"given%d" % n, n)])
                assert not HANDOFF.wanted
        finally:
            trio.lowlevel.start_thread_soon = original
    committed = writer.stats().transactions - transactions
    assert committed == 5 and HANDOFF.given - given == committed
    assert asked_between == [True] * committed


@pytest.fixture(autouse=True)
def _clean_handoff() -> None:
    HANDOFF.release()
