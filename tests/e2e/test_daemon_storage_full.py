"""A full store at its ceiling: writes are refused with storage_full, reads keep being served."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.actors.writer import Writer
from claykiln.daemon import BreakerOpen, StorageFull, TrioClient
from claykiln.daemon.simulator import RunningSimulator
from claykiln.storage import Put, Store, StoreFull

PINNING_READER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, max_dbs=16, lock=True)
txn = env.begin()
print("pinned", flush=True)
sys.stdin.read()
"""
TINY = '\n[daemon.storage]\nmap_size = "1MiB"\nmax_map_size = "1MiB"\n'


async def test_map_full_refuses_writes_and_keeps_serving_reads(
    kiln: Callable[..., KilnProcess], simulator: RunningSimulator
) -> None:
    """With the map at its ceiling a durable change gets storage_full; reads and calls go on."""
    proc = kiln(clay_config(simulator.url).replace("[upstreams.clay]", TINY + "\n[upstreams.clay]"))
    await proc.start()
    # A reader in another process pins every page from now on, so nobody can recycle freed
    # pages: once the map is full it stays full (a real full disk behaves the same way).
    pin = subprocess.Popen(
        [sys.executable, "-c", PINNING_READER, str(proc.state_dir / "store")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert pin.stdout is not None
    assert pin.stdout.readline() == b"pinned\n"
    # Another process may open the same LMDB environment: fill it from here.
    store = await trio.to_thread.run_sync(
        lambda: Store.open(proc.state_dir / "store", map_size=2**20, max_map_size=2**20)
    )
    try:
        async with trio.open_nursery() as nursery:
            writer = Writer(store)
            await nursery.start(writer.run)
            for size in (16384, 1024, 64, 8):  # big blobs, then the crumbs of free space
                with pytest.raises(StoreFull):
                    for i in range(5000):
                        key = f"filler-{size}-{i}".encode()
                        await writer.write([Put("cache", key, b"x" * size)])
            await writer.aclose()
    finally:
        store.close()
    async with TrioClient(str(proc.socket)) as client:
        with trio.fail_after(15):
            with pytest.raises(StorageFull) as refused:
                await client.breaker_force("clay", "open")
        assert "max_map_size" in refused.value.message
        # The force is in effect (in memory) even though it could not be saved; the caller
        # was told so. Reads and calls are still served.
        views = {v["key"]: v for v in await client.breaker_list()}
        assert views["clay"]["state"] == "forced_open"
        with pytest.raises(BreakerOpen):
            await client.call("me")
        with pytest.raises(StorageFull):
            await client.breaker_force("clay", "reset")
        status = await client.status()
        assert status["storage"]["ratio"] > 0.5
        assert status["storage"]["failed"] >= 2
        assert (await client.hello())["protocol"] == 1
        assert (await client.call("me"))["status"] == 200
    pin.kill()
    pin.wait(10)
    assert await proc.stop() == 0
