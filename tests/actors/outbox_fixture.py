"""The outbox in process over real parts: LMDB in a temp dir, the storage writer, lanes, breaker
and gate actors, an upstream pool and the Clay simulator on 127.0.0.1 (real clock: the writer
commits in a worker thread)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from claykiln.actors.breaker import BreakerBoard
from claykiln.actors.breaker_types import BreakerPolicy
from claykiln.actors.call import Operation
from claykiln.actors.dlq import DeadLetters
from claykiln.actors.gate import GateBoard, RatePolicy
from claykiln.actors.jobs_policy import JobPolicy, OutboxSettings, WebhookRules
from claykiln.actors.jobs_store import JobStore
from claykiln.actors.lanes import LanePolicy, Lanes
from claykiln.actors.outbox import Outbox
from claykiln.actors.pipeline import CallPipeline, UpstreamRoute
from claykiln.actors.retry import RetryPolicy
from claykiln.actors.scheduler import Scheduler
from claykiln.actors.upstream import TimeoutClasses, UpstreamPool, UpstreamSettings
from claykiln.actors.writer import Writer
from claykiln.storage import Store

WEBHOOK = "/v3/sources/webhook/{webhook_id}"
FAST = JobPolicy(max_attempts=3, base=0.02, cap=0.1, lane="bulk")
OPERATIONS = {
    op.name: op
    for op in (
        Operation(
            name="push_row",
            upstream="clay",
            method="POST",
            path=WEBHOOK,
            lane="bulk",
            timeout=2.0,
            breaker_scope="clay-webhook",
        ),
        Operation(
            name="push_keyed",
            upstream="clay",
            method="POST",
            path=WEBHOOK,
            lane="bulk",
            timeout=2.0,
            breaker_scope="clay-webhook",
        ),
        Operation(
            name="me",
            upstream="clay",
            method="GET",
            path="/public/v0/me",
            lane="bulk",
            timeout=2.0,
            repeat_safe=True,
            auth_header="clay-api-key",
            credential="sim-api-key",
            gate="clay-public",
        ),
    )
}
POLICIES = {
    "push_row": attrs.evolve(
        FAST, derive_key=True, webhook=WebhookRules(max_row=1000, lifetime_rows=50)
    ),
    "push_keyed": attrs.evolve(FAST, key_field="kiln_key", webhook=WebhookRules()),
    "me": FAST,
}
SETTINGS = OutboxSettings(concurrency=4, done_retention=3600.0, policies=POLICIES)


class Memory:
    """In-memory persist/load for the breaker and gate boards."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def persist(self, key: str, record: dict[str, Any]) -> None:
        self.records[key] = dict(record)

    def load(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)


@attrs.define
class Rig:
    store: Store
    jobs: JobStore
    outbox: Outbox
    scheduler: Scheduler
    dlq: DeadLetters
    pipeline: CallPipeline
    breakers: BreakerBoard
    settings: OutboxSettings

    def counts(self) -> dict[str, int]:
        return self.jobs.counts()

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        """Poll ``predicate()`` every 10 ms until true (bounded)."""
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.01)


@asynccontextmanager
async def outbox_rig(
    path: Path,
    base_url: str,
    *,
    settings: OutboxSettings = SETTINGS,
    rate: RatePolicy | None = None,
    breaker: BreakerPolicy | None = None,
    operations: Mapping[str, Operation] = OPERATIONS,
    sweep_interval: float = 5.0,
) -> AsyncIterator[Rig]:
    """Every part running; on exit the nursery is cancelled (a crash: jobs in flight stay in
    flight in storage) and the store closed."""
    store = Store.open(path)
    breaker = breaker or BreakerPolicy(
        volume_threshold=1000, consecutive_failures=0, consecutive_connect_failures=0
    )
    try:
        async with trio.open_nursery() as nursery:
            writer = Writer(store)
            await nursery.start(writer.run)
            memory = Memory()
            breakers = BreakerBoard(
                {"clay": breaker, "clay-webhook": breaker},
                breaker,
                persist=memory.persist,
                load=memory.load,
                rng=random.Random(3),
            )
            await nursery.start(breakers.run)
            gates = {"clay": rate} if rate is not None else {}
            gate = GateBoard(gates, persist=Memory().persist, load=Memory().load)
            await nursery.start(gate.run)
            lanes = Lanes({"bulk": LanePolicy(concurrency=8, queue=100, max_wait=5.0)})
            await nursery.start(lanes.run)
            pool = UpstreamPool(
                UpstreamSettings(
                    name="clay",
                    base_url=base_url,
                    timeouts=TimeoutClasses(connect=1.0, request=2.0, upload=2.0, long_poll=2.0),
                )
            )
            await nursery.start(pool.run)
            pipeline = CallPipeline(
                operations,
                {"clay": UpstreamRoute(pool, RetryPolicy(attempts=1))},
                lanes=lanes,
                breakers=breakers,
                gate=gate,
                rng=random.Random(5),
            )
            jobs = JobStore(store, writer)
            scheduler = Scheduler(
                jobs,
                pipeline,
                lambda: settings,
                rng=random.Random(9),
                sweep_interval=sweep_interval,
            )
            outbox = Outbox(
                jobs,
                pipeline,
                lambda: settings,
                scheduler.job_due,
                held=scheduler.is_held,
                counted=scheduler.row_counted,
            )
            dlq = DeadLetters(jobs, lambda: settings, scheduler.job_due)
            await nursery.start(scheduler.run)
            yield Rig(store, jobs, outbox, scheduler, dlq, pipeline, breakers, settings)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
