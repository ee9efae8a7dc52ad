"""A damaged store against real daemon processes: a truncated, zero-length or flipped-byte
``data.mdb`` is one ``storage.damaged`` alert and exit 1 (never SIGBUS, never a silently empty
table), the damaged files are left exactly as they were, and the documented recovery (move the
store aside, start) brings the daemon up on a fresh store."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import store_damage
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import TrioClient

Factory = Callable[..., KilnProcess]
NOWHERE = "http://127.0.0.1:9"


def digest(directory: Path) -> str:
    return hashlib.sha256((directory / "data.mdb").read_bytes()).hexdigest()


async def made_store(kiln: Factory) -> KilnProcess:
    """A daemon that ran once (its store made and closed cleanly), stopped."""
    proc = kiln(clay_config(NOWHERE))
    await proc.start()
    async with TrioClient(str(proc.socket)) as client:
        await client.breaker_force("clay", "open")  # a record in the breakers table
    assert await proc.stop() == 0
    return proc


async def damaged_start(proc: KilnProcess) -> dict[str, object]:
    """Start ``proc`` on its damaged store: it must exit 1 with one storage.damaged alert and
    no traceback; the alert."""
    with pytest.raises(AssertionError, match="exited 1 before READY"):
        await proc.start()
    assert await proc.wait() == 1
    assert "Traceback" not in proc.log_text(), proc.log_tail()
    alerts = proc.events("storage.damaged")
    assert len(alerts) == 1, proc.log_tail()
    alert = alerts[0]
    assert alert["alert"] is True
    assert alert["severity"] == "critical"
    assert alert["level"] == "critical"
    assert "A damaged store" in str(alert["error"])
    return alert


async def recover(proc: KilnProcess) -> Path:
    """docs/operations.md, "A damaged store": keep the store aside, start on a fresh one."""
    store = proc.state_dir / "store"
    aside = proc.state_dir / "store.damaged-test"
    store.rename(aside)
    await proc.start()
    async with TrioClient(str(proc.socket)) as client:
        views = {v["key"]: v for v in await client.breaker_list()}
        assert views["clay"]["state"] == "closed"  # fresh: the forced state is gone
    assert await proc.stop() == 0
    return aside


@pytest.mark.parametrize("pages", [1, 3])
async def test_truncated_data_file(kiln: Factory, pages: int) -> None:
    """data.mdb cut short: storage.damaged (truncated), exit 1 (the old code died of SIGBUS,
    exit -7, without a line); the file is untouched; recovery starts fresh."""
    with trio.fail_after(90):
        proc = await made_store(kiln)
        store = proc.state_dir / "store"
        size = store_damage.truncate(store, pages)
        before = digest(store)
        alert = await damaged_start(proc)
        assert alert["check"] == "truncated"
        assert f"holds {size} bytes" in str(alert["detail"])
        assert digest(store) == before
        aside = await recover(proc)
        assert digest(aside) == before


async def test_zero_length_data_file(kiln: Factory) -> None:
    """A zero-length data.mdb is storage.damaged (zero_length), not a fresh start in silence."""
    with trio.fail_after(90):
        proc = await made_store(kiln)
        store_damage.empty(proc.state_dir / "store")
        alert = await damaged_start(proc)
        assert alert["check"] == "zero_length"
        assert (proc.state_dir / "store" / "data.mdb").stat().st_size == 0
        await recover(proc)


async def test_flipped_byte_in_a_table_page(kiln: Factory) -> None:
    """One flipped byte in a page of the breakers table: storage.damaged naming the table (the
    old code started with an empty table without a word); the file is untouched."""
    with trio.fail_after(90):
        proc = await made_store(kiln)
        store = proc.state_dir / "store"
        store_damage.seed_store(store, breakers=40, jobs=0)
        store_damage.break_page_of(store, b"brk-017")
        before = digest(store)
        alert = await damaged_start(proc)
        assert alert["check"] in ("unreadable", "count_mismatch")
        assert digest(store) == before
        await recover(proc)


async def test_spoiled_breaker_record(kiln: Factory) -> None:
    """A breaker record whose bytes no longer decode: storage.damaged (undecodable) naming the
    table and key, not a breaker restored from garbage or dropped with a warning."""
    with trio.fail_after(90):
        proc = await made_store(kiln)
        store = proc.state_dir / "store"
        store_damage.seed_store(store, breakers=5, jobs=0)
        store_damage.spoil_value(store, b"brk-002")
        alert = await damaged_start(proc)
        assert alert["check"] == "undecodable"
        assert "breakers" in str(alert["detail"])
        assert "brk-002" in str(alert["detail"])


async def test_sound_store_reports_its_check(kiln: Factory) -> None:
    """A sound store starts, and daemon.started says how long its integrity walk took."""
    with trio.fail_after(90):
        proc = await made_store(kiln)
        (first,) = proc.events("daemon.started")
        assert first["store_checked_s"] is None  # a new store: nothing to walk
        await proc.start()
        assert await proc.stop() == 0
        second = proc.events("daemon.started")[-1]
        assert isinstance(second["store_checked_s"], float)
