"""kill -9: every write the writer acknowledged is on disk when the store is reopened."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from claykiln.storage import Store

# A child process: 8 tasks make acknowledged writes and print each key after its ack.
CHILD = """
import sys
import trio
from pathlib import Path
from claykiln.storage import Put, Store
from claykiln.actors.writer import Writer

async def main() -> None:
    store = Store.open(Path(sys.argv[1]))
    writer = Writer(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)

        async def worker(w: int) -> None:
            for i in range(1_000_000):
                key = f"{sys.argv[2]}-{w:02d}-{i:07d}"
                await writer.write([Put("jobs", key.encode(), {"w": w, "i": i})])
                print(key, flush=True)

        for w in range(8):
            nursery.start_soon(worker, w)

trio.run(main)
"""

ACKS_BEFORE_KILL = 400


async def _kill_after_acks(path: Path, run: int, log: Path) -> list[str]:
    """Start the child, SIGKILL it once ACKS_BEFORE_KILL keys are printed; return every key
    printed in full (a torn last line is not an acknowledgement)."""
    with log.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", CHILD, str(path), str(run)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    received = bytearray()
    try:
        while received.count(b"\n") < ACKS_BEFORE_KILL:
            chunk = await proc.stdout.receive_some()
            if not chunk:
                break
            received += chunk
        proc.kill()
        await proc.wait()
        while chunk := await proc.stdout.receive_some():
            received += chunk
    finally:
        await _reap(proc)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    complete = received[: received.rfind(b"\n") + 1]
    return complete.decode().split()


async def _reap(proc: trio.Process) -> None:
    """Kill ``proc`` if it still runs, wait for it and close its pipes (shielded, so a
    cancelled test still leaves no process behind)."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                await stream.aclose()


def _missing(path: Path, keys: list[str]) -> list[str]:
    store = Store.open(path)
    try:
        return [key for key in keys if store.get("jobs", key.encode()) is None]
    finally:
        store.close()


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    """Keys a killed process printed after their write was acknowledged are all present."""
    path = tmp_path / "state"
    with trio.fail_after(60):
        keys = await _kill_after_acks(path, 0, tmp_path / "child.err")
    assert len(keys) >= ACKS_BEFORE_KILL
    assert _missing(path, keys) == []


@pytest.mark.slow
async def test_acknowledged_writes_survive_repeated_kill_9(tmp_path: Path) -> None:
    """Twenty kill -9 rounds on one store lose no acknowledged write (stale readers cleared)."""
    path = tmp_path / "state"
    acked: list[str] = []
    with trio.fail_after(600):
        for run in range(20):
            acked += await _kill_after_acks(path, run, tmp_path / "child.err")
            assert _missing(path, acked) == []


# A child process that opens the environment (and, as "reader", holds a read transaction),
# says "ready", then waits for stdin to close.
HOLDER = """
import sys
import lmdb
env = lmdb.open(sys.argv[1], max_dbs=16)
txn = env.begin() if sys.argv[2] == "reader" else None
print("ready", flush=True)
sys.stdin.read()
"""


async def _start_holder(path: Path, role: str) -> trio.Process:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", HOLDER, str(path), role],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    said = b""
    while not said.endswith(b"\n"):
        chunk = await proc.stdout.receive_some()
        assert chunk, f"the {role} child exited before it was ready"
        said += chunk
    assert said == b"ready\n"
    return proc


async def test_open_clears_reader_slots_of_killed_processes(store_path: Path) -> None:
    """A reader slot left by a kill -9'd process is cleared when the store is next opened."""
    Store.open(store_path).close()
    with trio.fail_after(30):
        # A live process keeps the lock file open, so LMDB cannot simply reset the reader table.
        holder = await _start_holder(store_path, "holder")
        try:
            victim = await _start_holder(store_path, "reader")
            victim.kill()
            await _reap(victim)
            store = Store.open(store_path)
            store.close()
        finally:
            await _reap(holder)
    assert victim.returncode == -signal.SIGKILL
    assert store.meta.stale_readers_cleared == 1
