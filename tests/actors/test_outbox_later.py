"""Submits answered from the writer's commit (``Outbox.submit_later``), over real parts
(outbox_fixture.py): durable before the answer, keys written meanwhile followed or refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from outbox_fixture import outbox_rig

from claykiln.actors.call import CallRequest
from claykiln.actors.errors import IdempotencyMismatchRefusal
from claykiln.actors.outbox import PreparedJob
from claykiln.daemon.simulator import Faults, open_simulator
from claykiln.storage import Store


class Settled:
    """What a ``Later`` does for the outbox: keeps the one answer or refusal it gets."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[Any, BaseException | None]] = []
        self.done = trio.Event()

    def answer(self, result: Any) -> None:
        self.outcomes.append((result, None))
        self.done.set()

    def refuse(self, error: BaseException) -> None:
        self.outcomes.append((None, error))
        self.done.set()


def push(row: Any, **kw: Any) -> CallRequest:
    return CallRequest(operation="push_row", path_params={"webhook_id": "w1"}, json=row, **kw)


async def test_a_submit_later_is_answered_once_its_job_is_on_disk(tmp_path: Path) -> None:
    """No task: the commit answers; a fresh open of the store already holds the job, and
    the scheduler heard the queue is due."""
    with trio.fail_after(30):
        async with open_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                prepared = rig.outbox.prepare(push({"n": 1}, idempotency_key="k1"))
                assert isinstance(prepared, PreparedJob)
                settled = Settled()
                assert rig.outbox.submit_later(prepared, settled)
                assert not settled.outcomes  # nothing before the commit
                await settled.done.wait()
                accepted = rig.outbox.stats()["accepted"]
            sim.sim.clear_faults()
        reopened = Store.open(tmp_path / "s")
        try:
            ((answer, error),) = settled.outcomes
            assert error is None and answer["existing"] is False
            assert reopened.get("jobs", answer["job_id"].encode()) is not None
        finally:
            reopened.close()
    assert accepted == 1


async def test_submits_of_a_key_being_written_follow_that_write(tmp_path: Path) -> None:
    """Two submits of one key before the first commits: one job; the second is answered with
    it (existing) once it is on disk; another request under the key is refused at once."""
    with trio.fail_after(30):
        async with open_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                first, second = Settled(), Settled()
                a = rig.outbox.prepare(push({"n": 1}, idempotency_key="race"))
                b = rig.outbox.prepare(push({"n": 1}, idempotency_key="race"))
                other = rig.outbox.prepare(push({"n": 2}, idempotency_key="race"))
                assert isinstance(a, PreparedJob) and isinstance(b, PreparedJob)
                assert isinstance(other, PreparedJob)
                assert rig.outbox.submit_later(a, first)
                assert rig.outbox.submit_later(b, second)
                with pytest.raises(IdempotencyMismatchRefusal):
                    rig.outbox.submit_later(other, Settled())
                await first.done.wait()
                await second.done.wait()
                counts = rig.counts()
                existing = rig.outbox.stats()["existing"]
            sim.sim.clear_faults()
    ((one, e1),) = first.outcomes
    ((two, e2),) = second.outcomes
    assert e1 is None and e2 is None
    assert one["job_id"] == two["job_id"]
    assert (one["existing"], two["existing"]) == (False, True)
    assert counts["pending"] + counts["in_flight"] + counts["done"] == 1
    assert existing == 1
