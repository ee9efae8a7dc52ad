"""A full disk under a real daemon's store: ``storage.ratio`` reads the disk as the ceiling (not
0.0 against a 4 GiB map), and state whose write failed while the disk was full (a forced
breaker) reaches the disk once space returns, so a restart remembers it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import StorageFull, TrioClient

Factory = Callable[..., KilnProcess]
NOWHERE = "http://127.0.0.1:9"
STORAGE = '\n[daemon.storage]\nmap_size = "1MiB"\nmax_map_size = "4GiB"\n'


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (needs root, as CI and the dev machines run)."""
    mount = Path(f"/tmp/kiln-h12b-disk-{os.getpid()}")
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (not root?): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def fill(mount: Path) -> Path:
    """Fill the filesystem at ``mount`` to its last byte with one file; the file."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0")
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


async def fresh_storage(
    client: TrioClient, wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """status' storage section once it satisfies ``wanted`` (status answers are shared for up
    to [daemon.limits] status_max_age, 100 ms: a reading may be that old)."""
    while True:
        storage: dict[str, Any] = (await client.status())["storage"]
        if wanted(storage):
            return storage
        await trio.sleep(0.05)


async def test_full_disk_ratio_and_the_forced_breaker_saved_once_space_returns(
    kiln: Factory, small_disk: Path
) -> None:
    """While the disk is full: a breaker force answers storage_full and status' storage ratio
    reads >= 0.95 (the old code said ~0.0). Once space returns the force is written without
    anyone asking again (storage.write_retried), and survives a restart."""
    proc = kiln(clay_config(NOWHERE).replace("[upstreams.clay]", STORAGE + "[upstreams.clay]"))
    proc.state_dir = small_disk / "state"
    with trio.fail_after(90):
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            before = (await client.status())["storage"]
            assert before["ratio"] < 0.5
            filler = fill(small_disk)
            with pytest.raises(StorageFull):
                await client.breaker_force("clay", "open")
            await fresh_storage(client, lambda s: s["ratio"] >= 0.95)
            views = {v["key"]: v for v in await client.breaker_list()}
            assert views["clay"]["state"] == "forced_open"  # in effect, not yet saved
            filler.unlink()
            while not proc.events("storage.write_retried"):
                await trio.sleep(0.1)
            await fresh_storage(client, lambda s: s["ratio"] < 0.5)
        assert await proc.stop() == 0
        await proc.start()
        async with TrioClient(str(proc.socket)) as client:
            views = {v["key"]: v for v in await client.breaker_list()}
            assert views["clay"]["state"] == "forced_open"
        assert await proc.stop() == 0
    retried = proc.events("storage.write_retried")[0]
    assert retried["ops"] >= 1
