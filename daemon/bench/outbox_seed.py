"""Seed a state directory with outbox jobs through the storage layer (for the scale figures).

``seed_jobs(state_dir, waiting=N, dead=M)`` writes N pending push_row jobs (due in a day, so a
daemon started on the directory leaves them waiting) spread over ``QUEUES`` webhook sources,
and M dead ones, in large transactions without fsync (one fsync at the end), growing the map as
it fills, exactly as the daemon's own submit path lays them out (``transition_ops``). It is a
test and benchmark tool: a daemon must not be running on ``state_dir``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

import attrs

from claykiln.actors.jobs import Job, JobState, new_job_id, transition_ops
from claykiln.storage import Op, Store, StoreFull

__all__ = ["QUEUES", "STORE_DIRNAME", "seed_jobs"]

STORE_DIRNAME: Final = "store"  # the daemon's store under its state dir (daemon/app.py)
QUEUES: Final = 10
BATCH: Final = 20_000
DAY: Final = 86_400.0


def _job(n: int, now: float, *, dead: bool) -> Job:
    queue = f"clay:/v3/sources/webhook/seed-{n % QUEUES}"
    job_id = new_job_id(now)
    row = {"email": f"user{n}@example.com", "name": f"User {n}", "company": "Example Inc."}
    job = Job(
        id=job_id,
        operation="push_row",
        request={"path_params": {"webhook_id": f"seed-{n % QUEUES}"}, "json": row},
        key=f"seed-{n}",
        fingerprint=f"{n:064x}",
        queue=queue,
        state=JobState.PENDING,
        created_at=now,
        due_at=now + DAY,
        max_attempts=5,
        source=queue,
        indexed=True,
    )
    if dead:
        job = attrs.evolve(
            job,
            state=JobState.DEAD,
            reason="rejected" if n % 2 else "max_attempts",
            dead_at=now - (n % 3600),
            attempts=1,
            error="status 400: seeded",
        )
    return job


def _commit(store: Store, ops: list[Op]) -> None:
    prepared = store.prepare(ops)
    while True:
        error = store.commit_group([prepared])
        if error is None:
            return
        if not (isinstance(error, StoreFull) and store.grow()):
            raise error


def seed_jobs(state_dir: Path, *, waiting: int, dead: int = 0) -> dict[str, float]:
    """Write ``waiting`` pending and ``dead`` dead jobs under ``state_dir``; the seconds it
    took and the store's size in bytes."""
    started = time.perf_counter()
    store = Store.open(Path(state_dir) / STORE_DIRNAME, sync=False, max_map_size=64 << 30)
    try:
        now = time.time()
        ops: list[Op] = []
        for n in range(waiting + dead):
            ops.extend(transition_ops(None, _job(n, now, dead=n >= waiting)))
            if len(ops) >= BATCH * 4:
                _commit(store, ops)
                ops = []
        if ops:
            _commit(store, ops)
        used = store.usage().used_bytes
    finally:
        store.close()
    # An open with sync on commits (and fsyncs) once: what the seeding left in the page cache
    # is on disk before a daemon is timed starting on it, as a real store's would be.
    Store.open(Path(state_dir) / STORE_DIRNAME).close()
    return {"seconds": round(time.perf_counter() - started, 2), "store_bytes": used}
