"""A full disk (a real 1 MiB tmpfs): writes fail with StoreFull naming the disk; reads go on."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from claykiln.actors.writer import Writer
from claykiln.storage import Put, Store, StoreFull


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test (needs root, as CI and the dev machines run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_disk_gives_storage_full_and_reads_go_on(tiny_disk: Path) -> None:
    """The map has room (8 MiB) but the disk does not: StoreFull names the disk, the writer
    survives and earlier writes stay readable."""
    store = Store.open(tiny_disk / "store", map_size=8 * 2**20, max_map_size=8 * 2**20)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                writer = Writer(store)
                await nursery.start(writer.run)
                written = 0
                with pytest.raises(StoreFull) as full:
                    for i in range(2000):
                        await writer.write([Put("cache", f"k{i}".encode(), b"x" * 4096)])
                        written += 1
                assert "disk holding" in str(full.value)
                assert written > 10
                assert store.get("cache", b"k0") == b"x" * 4096  # reads go on
                assert store.count("cache") == written
                await writer.write([])  # the writer is alive (an empty batch commits nothing)
                await writer.aclose()
    finally:
        store.close()


def fill_disk(mount: Path) -> Path:
    """Fill the filesystem at ``mount`` with one file, to its last byte; the file."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


async def tried(writer: Writer, failures: int) -> None:
    """Wait until ``failures`` fire-and-forget writes have failed (a barrier write would fail
    too on a full disk: it shares their transaction)."""
    while writer.stats().nowait_failed < failures:
        await trio.sleep(0.01)


async def test_fire_and_forget_writes_are_written_once_space_returns(tiny_disk: Path) -> None:
    """write_nowait asks that fail on a full disk are held and written by a retry once space
    returns (latest value per key); usage() reads the disk as the ceiling meanwhile."""
    store = Store.open(tiny_disk / "store", map_size=8 * 2**20, max_map_size=8 * 2**20)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                writer = Writer(store)
                await nursery.start(writer.run)
                await writer.write([Put("breakers", b"early", {"state": "closed"})])
                filler = fill_disk(tiny_disk)
                usage = store.usage()
                assert usage.disk_bound and usage.ratio > 0.95, usage
                for n, state in enumerate(("open", "half_open", "forced_open"), 1):
                    assert writer.write_nowait([Put("breakers", b"clay", {"state": state})])
                    await tried(writer, n)
                stats = writer.stats()
                assert stats.nowait_failed == 3
                assert stats.held == 1  # one key, its latest value
                assert store.get("breakers", b"clay") is None
                filler.unlink()
                while writer.stats().retried == 0:
                    await trio.sleep(0.05)
                assert writer.stats().held == 0
                assert store.get("breakers", b"clay") == {"state": "forced_open"}
                assert store.usage().ratio < 0.95
                await writer.aclose()
    finally:
        store.close()


async def test_a_newer_write_supersedes_the_held_one(tiny_disk: Path) -> None:
    """A held op is dropped when a later write of its key commits: the retry never writes the
    older value over the newer one."""
    store = Store.open(tiny_disk / "store", map_size=8 * 2**20, max_map_size=8 * 2**20)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                writer = Writer(store)
                await nursery.start(writer.run)
                filler = fill_disk(tiny_disk)
                assert writer.write_nowait([Put("gate", b"clay", {"until": 1})])
                await tried(writer, 1)
                assert writer.stats().held == 1
                filler.unlink()
                await writer.write([Put("gate", b"clay", {"until": 2})])
                assert writer.stats().held == 0
                await trio.sleep(1.5)  # past a retry period: nothing left to retry
                assert store.get("gate", b"clay") == {"until": 2}
                assert writer.stats().retried == 0
                await writer.aclose()
    finally:
        store.close()
