"""A full disk (a real 1 MiB tmpfs): writes fail with StoreFull naming the disk; reads go on."""

from __future__ import annotations

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
