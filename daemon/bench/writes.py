"""Benchmark: durable writes through the group-commit writer against one commit per write.

Not a test: figures depend on the disk. ``kiln bench`` calls ``durable_writes`` (or awaits
``durable_writes_async`` from inside trio). Both modes run in the same call, each on its own
store in a subdirectory of ``path`` (created if missing; give a fresh ``path`` for clean
figures), with ``sync=True`` (every commit is fsynced) and the same load:
``tasks`` concurrent trio tasks each making up to ``writes_per_task`` acknowledged writes of one
small record, stopping early when a mode has used ``seconds``.

- group commit: each write is ``await writer.write([Put(...)])``;
- single commit: each write is its own write transaction in a worker thread, serialized by a
  limiter of one (LMDB allows one writer at a time anyway; more threads only queue on its lock).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from claykiln.actors.writer import Writer
from claykiln.storage.codec import text_key
from claykiln.storage.env import Store
from claykiln.storage.ops import Put

__all__ = ["durable_writes", "durable_writes_async"]

_TABLE = "jobs"


def durable_writes(
    path: Path, *, tasks: int = 64, writes_per_task: int = 200, seconds: float = 10.0
) -> dict[str, Any]:
    """Run both modes (each bounded by ``tasks * writes_per_task`` writes and ``seconds``) and
    return ``{"tasks", "group_commit": {...}, "single_commit": {...}, "ratio"}`` where each mode
    has ``writes``, ``seconds``, ``writes_per_s`` and ``transactions`` and ``ratio`` is group
    over single writes/s. Starts its own trio run: call it outside trio."""
    run = functools.partial(
        durable_writes_async, path, tasks=tasks, writes_per_task=writes_per_task, seconds=seconds
    )
    return trio.run(run)


async def durable_writes_async(
    path: Path, *, tasks: int = 64, writes_per_task: int = 200, seconds: float = 10.0
) -> dict[str, Any]:
    """``durable_writes`` for callers already inside trio."""
    if tasks <= 0 or writes_per_task <= 0 or seconds <= 0:
        msg = (
            "need positive tasks, writes_per_task and seconds, "
            f"got {tasks}, {writes_per_task}, {seconds}"
        )
        raise ValueError(msg)
    path = Path(path)
    group = await _group_commit(path / "group_commit", tasks, writes_per_task, seconds)
    single = await _single_commit(path / "single_commit", tasks, writes_per_task, seconds)
    ratio = group["writes_per_s"] / single["writes_per_s"] if single["writes_per_s"] else 0.0
    return {"tasks": tasks, "group_commit": group, "single_commit": single, "ratio": ratio}


async def _group_commit(path: Path, tasks: int, per_task: int, seconds: float) -> dict[str, Any]:
    store = await trio.to_thread.run_sync(functools.partial(Store.open, path, sync=True))
    try:
        writer = Writer(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)

            async def put(key: bytes, value: dict[str, Any]) -> None:
                await writer.write([Put(_TABLE, key, value)])

            result = await _drive(put, tasks, per_task, seconds)
            await writer.aclose()
        result["transactions"] = writer.stats().transactions
        return result
    finally:
        store.close()


async def _single_commit(path: Path, tasks: int, per_task: int, seconds: float) -> dict[str, Any]:
    store = await trio.to_thread.run_sync(functools.partial(Store.open, path, sync=True))
    limiter = trio.CapacityLimiter(1)
    try:

        async def put(key: bytes, value: dict[str, Any]) -> None:
            ops = store.prepare([Put(_TABLE, key, value)])
            error = await trio.to_thread.run_sync(store.commit_group, [ops], limiter=limiter)
            if error is not None:
                raise error

        result = await _drive(put, tasks, per_task, seconds)
        result["transactions"] = result["writes"]
        return result
    finally:
        store.close()


async def _drive(
    put: Callable[[bytes, dict[str, Any]], Awaitable[None]],
    tasks: int,
    per_task: int,
    seconds: float,
) -> dict[str, Any]:
    """Run ``tasks`` writers of up to ``per_task`` writes each until done or ``seconds`` pass."""
    done = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def one_task(task: int) -> None:
        nonlocal done
        for i in range(per_task):
            if time.perf_counter() >= deadline:
                return
            await put(text_key(f"{task:04d}-{i:08d}"), {"task": task, "i": i, "body": "x" * 64})
            done += 1

    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(one_task, task)
    elapsed = time.perf_counter() - started
    return {"writes": done, "seconds": elapsed, "writes_per_s": done / elapsed if elapsed else 0.0}
