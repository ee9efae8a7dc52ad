"""The idempotency store actor over a real LMDB store and the real writer (real clock: the
writer commits in a worker thread); the wall clock records use is a test-driven fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing

from claykiln.actors.errors import (
    IdempotencyInDoubtRefusal,
    IdempotencyInFlightRefusal,
    IdempotencyMismatchRefusal,
    UpstreamRefusal,
)
from claykiln.actors.idempotency import Follow, IdempotencyStore, Lead, Replay
from claykiln.actors.idempotency_record import IdempotencyRecord, RecordState
from claykiln.actors.mailbox import ActorStopped
from claykiln.actors.writer import Writer
from claykiln.storage import Store

FP = "a" * 64
OTHER = "b" * 64


@attrs.define
class WallClock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(
    path: Path, clock: WallClock, **kw: Any
) -> AsyncIterator[tuple[IdempotencyStore, Writer, Store]]:
    store = Store.open(path)
    writer = Writer(store)
    idem = IdempotencyStore(store, writer, wall_clock=clock, **kw)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(idem.run)
            yield idem, writer, store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def intent(idem: IdempotencyStore, key: str, fp: str = FP, *, retention: float = 60.0) -> Any:
    now = idem.now()
    return IdempotencyRecord(
        key=key,
        state=RecordState.IN_FLIGHT,
        operation="push_row",
        fingerprint=fp,
        boot=idem.boot,
        started_at=now,
        expires_at=now + retention,
        sent={"method": "POST", "path": "/v3/sources/webhook/w1"},
    )


def completed(record: IdempotencyRecord, result: dict[str, Any]) -> IdempotencyRecord:
    return attrs.evolve(
        record, state=RecordState.COMPLETED, completed_at=record.started_at, result=result
    )


async def test_one_leads_the_others_follow_and_share_its_answer(store_path: Path) -> None:
    """The first begin leads; concurrent begins with the key follow and get its answer."""
    clock = WallClock()
    with trio.fail_after(10):
        async with running(store_path, clock) as (idem, _, _):
            first = await idem.begin("k1", FP, repeatable=False, deadline=None)
            assert isinstance(first, Lead) and first.previous is None
            follows = [
                await idem.begin("k1", FP, repeatable=False, deadline=None) for _ in range(3)
            ]
            assert all(isinstance(f, Follow) for f in follows)
            await idem.finish("k1", {"status": 200, "body": "ok"})
            answers = [await f.answer.wait() for f in follows if isinstance(f, Follow)]
            assert answers == [{"status": 200, "body": "ok"}] * 3
            stats = idem.stats()
            assert (stats["led"], stats["coalesced"], stats["in_flight"]) == (1, 3, 0)


async def test_followers_share_the_leaders_failure(store_path: Path) -> None:
    """A leader that ends with a refusal hands each follower its own copy of it."""
    with trio.fail_after(10):
        async with running(store_path, WallClock()) as (idem, _, _):
            await idem.begin("k", FP, repeatable=False, deadline=None)
            follow = await idem.begin("k", FP, repeatable=False, deadline=None)
            assert isinstance(follow, Follow)
            error = UpstreamRefusal("boom", details={"status": 503})
            await idem.finish("k", error)
            with pytest.raises(UpstreamRefusal) as info:
                await follow.answer.wait()
            assert info.value is not error and info.value.details == {"status": 503}


async def test_a_running_key_with_another_fingerprint_is_refused(store_path: Path) -> None:
    """While the key runs, another request under it is a mismatch naming both fingerprints."""
    with trio.fail_after(10):
        async with running(store_path, WallClock()) as (idem, _, _):
            await idem.begin("k", FP, repeatable=False, deadline=None)
            with pytest.raises(IdempotencyMismatchRefusal) as info:
                await idem.begin("k", OTHER, repeatable=False, deadline=None)
            assert info.value.details == {
                "key": "k",
                "fingerprint": FP,
                "request_fingerprint": OTHER,
            }
            assert idem.stats()["mismatched"] == 1


async def test_a_completed_record_replays_and_survives_a_restart(store_path: Path) -> None:
    """A completed record is replayed by begin, also by the next process on the same store."""
    clock = WallClock()
    result = {"status": 200, "headers": {}, "body": {"n": 1}, "attempts": 1, "duration_ms": 1.0}
    with trio.fail_after(10):
        async with running(store_path, clock) as (idem, _, _):
            await idem.begin("k", FP, repeatable=False, deadline=None)
            record = intent(idem, "k")
            await idem.save_intent(record)
            await idem.save(completed(record, result))
            await idem.finish("k", result)
        async with running(store_path, clock) as (idem, _, _):
            again = await idem.begin("k", FP, repeatable=False, deadline=None)
            assert isinstance(again, Replay)
            assert again.record.result == result
            assert idem.stats()["in_doubt_at_start"] == 0


async def test_records_left_in_flight_are_in_doubt_after_a_restart(store_path: Path) -> None:
    """An intent with no outcome becomes in_doubt at the next start (alert); begin then refuses
    it unless the operation is repeatable, which leads again."""
    clock = WallClock()
    with trio.fail_after(10):
        async with running(store_path, clock) as (idem, _, _):
            await idem.begin("k", FP, repeatable=False, deadline=None)
            await idem.save_intent(intent(idem, "k"))
            old_boot = idem.boot
            # the process "dies" here: no outcome, no finish
        with structlog.testing.capture_logs() as logs:
            async with running(store_path, clock) as (idem, _, store):
                record = idem.lookup("k")
                assert record is not None and record.state is RecordState.IN_DOUBT
                assert record.boot == old_boot and "stopped" in (record.doubt or "")
                assert store.count("idempotency_inflight") == 0
                with pytest.raises(IdempotencyInDoubtRefusal):
                    await idem.begin("k", FP, repeatable=False, deadline=None)
                lead = await idem.begin("k", FP, repeatable=True, deadline=None)
                assert isinstance(lead, Lead) and lead.previous == record
    (alert,) = [e for e in logs if e["event"] == "idempotency.in_doubt"]
    assert (alert["alert"], alert["severity"], alert["log_level"]) == (True, "warning", "warning")
    assert (alert["count"], alert["keys"], alert["boot"]) == (1, ["k"], old_boot + 1)


async def test_an_expired_record_leads_again(store_path: Path) -> None:
    """Past its retention, a completed key runs again (and replaces the old record)."""
    clock = WallClock()
    with trio.fail_after(10):
        async with running(store_path, clock, sweep_interval=3600) as (idem, _, _):
            await idem.begin("k", FP, repeatable=False, deadline=None)
            record = intent(idem, "k", retention=10)
            await idem.save_intent(record)
            await idem.save(completed(record, {"status": 200}))
            await idem.finish("k", {"status": 200})
            clock.now += 10
            lead = await idem.begin("k", OTHER, repeatable=False, deadline=None)
            assert isinstance(lead, Lead) and lead.previous is not None


async def test_the_sweeper_deletes_expired_records_in_bounded_batches(store_path: Path) -> None:
    """1000 expired records go in batches of 100 (one write each), skipping the live ones and
    a key in flight, while begins are answered between batches."""
    clock = WallClock()
    with trio.fail_after(30):
        async with running(store_path, clock, sweep_interval=0.01, sweep_batch=100) as (
            idem,
            writer,
            store,
        ):
            busy = await idem.begin("old-0000", FP, repeatable=False, deadline=None)
            assert isinstance(busy, Lead)  # in flight from now on: never swept
            clock.now -= 3600  # write them as if they started an hour ago
            for n in range(0, 1000, 250):
                records = [intent(idem, f"old-{i:04d}", retention=60) for i in range(n, n + 250)]
                async with trio.open_nursery() as nursery:
                    for record in records:
                        nursery.start_soon(idem.save, completed(record, {"status": 200}))
            clock.now += 3600
            live = intent(idem, "live", retention=60)
            await idem.save(completed(live, {"status": 200}))
            before = writer.stats().transactions
            answered = 0
            # The tallies move when the sweeper's task resumes after its commit, which is
            # visible in the store a moment earlier: wait on the tallies, then read the store.
            while idem.stats()["swept"] < 999:
                follow = await idem.begin("old-0000", FP, repeatable=False, deadline=None)
                assert isinstance(follow, Follow)
                answered += 1
                await trio.sleep(0.005)
            stats = idem.stats()
            assert stats["swept"] == 999
            assert store.count("idempotency") == 2
            assert stats["sweeps"] >= 10
            assert writer.stats().transactions - before >= 10
            assert answered > 0
            assert idem.lookup("live") is not None
            assert idem.lookup("old-0000") is not None  # in flight: never swept
            assert store.count("idempotency_expiry") == 2


async def test_forget_deletes_a_record_but_not_one_in_flight(store_path: Path) -> None:
    """forget removes the record and its indexes; a key in flight is refused."""
    with trio.fail_after(10):
        async with running(store_path, WallClock()) as (idem, _, store):
            record = intent(idem, "k")
            await idem.save(attrs.evolve(record, state=RecordState.IN_DOUBT, doubt="x"))
            assert await idem.forget("k") is True
            assert idem.lookup("k") is None
            assert store.count("idempotency_expiry") == 0
            assert await idem.forget("k") is False
            await idem.begin("busy", FP, repeatable=False, deadline=None)
            with pytest.raises(IdempotencyInFlightRefusal):
                await idem.forget("busy")


async def test_a_stopped_actor_fails_followers_and_later_asks(store_path: Path) -> None:
    """Followers still waiting and asks after the stop get ActorStopped, never a hang."""
    with trio.fail_after(10):
        store = Store.open(store_path)
        try:
            writer = Writer(store)
            idem = IdempotencyStore(store, writer)
            async with trio.open_nursery() as outer:
                await outer.start(writer.run)
                async with trio.open_nursery() as nursery:
                    await nursery.start(idem.run)
                    await idem.begin("k", FP, repeatable=False, deadline=None)
                    follow = await idem.begin("k", FP, repeatable=False, deadline=None)
                    nursery.cancel_scope.cancel()
                assert isinstance(follow, Follow)
                with pytest.raises(ActorStopped):
                    await follow.answer.wait()
                with pytest.raises(ActorStopped):
                    await idem.begin("k2", FP, repeatable=False, deadline=None)
                outer.cancel_scope.cancel()
        finally:
            store.close()


async def test_an_intent_whose_outcome_was_not_saved_is_in_doubt(store_path: Path) -> None:
    """A leader that could not write its outcome leaves its intent: the key is in doubt at
    once (no restart needed), and idempotency.get's lookup shows the intent."""
    with trio.fail_after(10):
        async with running(store_path, WallClock()) as (idem, _, _):
            await idem.begin("k", FP, repeatable=False, deadline=None)
            await idem.save_intent(intent(idem, "k"))
            await idem.finish("k", {"status": 200}, intent_kept=True)
            with pytest.raises(IdempotencyInDoubtRefusal):
                await idem.begin("k", FP, repeatable=False, deadline=None)
            shown = idem.lookup_current("k")
            assert shown is not None and shown.state is RecordState.IN_FLIGHT
            assert isinstance(await idem.begin("k", FP, repeatable=True, deadline=None), Lead)


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the table of every ``Store.get`` from now on."""
    reads: list[str] = []
    get = Store.get

    def counted(self: Store, table: str, key: bytes) -> Any:
        reads.append(table)
        return get(self, table, key)

    monkeypatch.setattr(Store, "get", counted)
    return reads


async def test_a_replayed_record_is_read_from_storage_once(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completed record is kept in memory once read: the next reads of the key (a replay
    each) need no storage read, and give the same map."""
    clock = WallClock()
    with trio.fail_after(10):
        async with running(store_path, clock) as (idem, _, _):
            record = intent(idem, "k")
            await idem.save(completed(record, {"status": 200}))
            reads = _counting_reads(monkeypatch)
            first = idem.stored_value("k")
            assert idem.stored_value("k") is first and idem.stored_value("k") is first
            assert reads == ["idempotency"]
            assert first["state"] == "completed"
            copies = idem.stats()["replay_copies"]
            assert copies["entries"] == 1 and copies["hits"] == 2 and copies["bytes"] > 0
            assert idem.stored_value("absent") is None and idem.stored_value("absent") is None
            assert reads == ["idempotency"] * 3  # what is not a completed record is not kept


async def test_every_write_of_a_record_replaces_its_kept_copy(store_path: Path) -> None:
    """A kept record never outlives a write of its key: a save, a save_then, a forget; the
    next read has what was written, and a forgotten key runs again."""
    clock = WallClock()
    with trio.fail_after(10):
        async with running(store_path, clock) as (idem, _, _):
            record = intent(idem, "k")
            await idem.save(completed(record, {"status": 200, "n": 1}))
            assert idem.stored_value("k")["expires"] == record.expires_at
            await idem.save(completed(record, {"status": 200, "n": 2}))
            kept = idem.lookup("k")
            assert kept is not None and kept.result == {"status": 200, "n": 2}
            assert idem.stored_value("k") == idem.lookup("k").to_value()  # type: ignore[union-attr]
            written = trio.Event()
            assert idem.save_then(
                completed(record, {"status": 200, "n": 3}), lambda _error: written.set()
            )
            await written.wait()
            value = idem.stored_value("k")
            assert IdempotencyRecord.from_value("k", value).result == {  # type: ignore[union-attr]
                "status": 200,
                "n": 3,
            }
            assert await idem.forget("k") is True
            assert idem.stored_value("k") is None
            assert isinstance(await idem.begin("k", FP, repeatable=False, deadline=None), Lead)


async def test_a_kept_record_is_not_replayed_past_its_expiry(store_path: Path) -> None:
    """A kept copy past its record's expiry is dropped at its next read: the key leads again,
    as it does when read from storage."""
    clock = WallClock()
    with trio.fail_after(10):
        async with running(store_path, clock, sweep_interval=3600) as (idem, _, _):
            record = intent(idem, "k", retention=10)
            await idem.save(completed(record, {"status": 200}))
            await idem.finish("k", {"status": 200})
            assert isinstance(await idem.begin("k", FP, repeatable=False, deadline=None), Replay)
            assert idem.stats()["replay_copies"]["entries"] == 1
            clock.now += 10
            lead = await idem.begin("k", FP, repeatable=False, deadline=None)
            assert isinstance(lead, Lead) and lead.previous is not None
            assert idem.stats()["replay_copies"]["entries"] == 0


async def test_the_kept_records_are_bounded(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``REPLAY_CACHE_ENTRIES`` records and ``REPLAY_CACHE_BYTES`` of answers are
    kept, the oldest dropped first; an answer over a sixteenth of the bytes is never kept."""
    monkeypatch.setattr("claykiln.actors.idempotency.REPLAY_CACHE_ENTRIES", 4)
    clock = WallClock()
    with trio.fail_after(10):
        async with running(store_path, clock) as (idem, _, _):
            for n in range(10):
                record = intent(idem, f"k{n:02d}")
                await idem.save(completed(record, {"status": 200, "n": n}))
                assert idem.stored_value(f"k{n:02d}") is not None
            copies = idem.stats()["replay_copies"]
            assert copies["entries"] == 4
            size = copies["bytes"] // 4  # each record's answer is as long as the others'
            for n in range(6, 10):  # the four kept are the newest: read without a storage read
                idem.stored_value(f"k{n:02d}")
            assert idem.stats()["replay_copies"]["hits"] == 4
            monkeypatch.setattr("claykiln.actors.idempotency.REPLAY_CACHE_ENTRIES", 100)
            monkeypatch.setattr("claykiln.actors.idempotency.REPLAY_CACHE_BYTES", size * 20)
            for n in range(10, 40):
                record = intent(idem, f"k{n:02d}")
                await idem.save(completed(record, {"status": 200, "n": n}))
                idem.stored_value(f"k{n:02d}")
            copies = idem.stats()["replay_copies"]
            assert copies["entries"] == 20 and copies["bytes"] == size * 20
            before = idem.stats()["replay_copies"]["hits"]
            idem.stored_value("k39")  # the newest stayed
            assert idem.stats()["replay_copies"]["hits"] == before + 1
            big = intent(idem, "big")  # over a sixteenth of the bytes: read, never kept
            await idem.save(completed(big, {"status": 200, "body": "x" * size * 2}))
            assert idem.stored_value("big") is not None
            assert idem.stats()["replay_copies"]["entries"] == 20
            idem.stored_value("big")
            assert idem.stats()["replay_copies"]["hits"] == before + 1
