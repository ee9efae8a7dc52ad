"""The submit side over real parts (outbox_fixture.py): checks at submit, keys, durability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from outbox_fixture import outbox_rig

from claykiln.actors.call import CallRequest
from claykiln.actors.errors import (
    BadRequestRefusal,
    IdempotencyMismatchRefusal,
    UnknownOperationRefusal,
)
from claykiln.actors.jobs import JobState
from claykiln.actors.jobs_quota import SourceQuota, quota_put
from claykiln.actors.outbox import PreparedJob
from claykiln.daemon.simulator import Faults, open_simulator


def push(webhook: str = "w1", row: Any = None, **kw: Any) -> CallRequest:
    return CallRequest(
        operation=kw.pop("operation", "push_row"),
        path_params={"webhook_id": webhook},
        json={"n": 1} if row is None else row,
        **kw,
    )


async def test_a_submit_is_on_disk_before_its_answer(tmp_path: Path) -> None:
    """The answer names a pending job that a fresh open of the store already holds."""
    with trio.fail_after(30):
        async with open_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                prepared = rig.outbox.prepare(push(row={"email": "ada@example.com"}))
                assert isinstance(prepared, PreparedJob)
                answer = await rig.outbox.submit(prepared)
                job = rig.jobs.get(answer["job_id"])
            sim.sim.clear_faults()
    assert answer["state"] == "pending" and answer["existing"] is False
    assert job is not None and job.request["json"] == {"email": "ada@example.com"}
    assert answer["idempotency_key"].startswith("sha256:")  # push_row derives its key


async def test_the_same_row_or_key_finds_the_existing_job(tmp_path: Path) -> None:
    """A derived key dedupes the same row; a given key returns its job; another request under
    a used key is a mismatch."""
    with trio.fail_after(30):
        async with open_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                first = await rig.outbox.submit(rig.outbox.prepare(push()))  # type: ignore[arg-type]
                again = rig.outbox.prepare(push())
                keyed = await rig.outbox.submit(
                    rig.outbox.prepare(push(row={"n": 2}, idempotency_key="k-1"))  # type: ignore[arg-type]
                )
                same = rig.outbox.prepare(push(row={"n": 2}, idempotency_key="k-1"))
                with pytest.raises(IdempotencyMismatchRefusal):
                    rig.outbox.prepare(push(row={"n": 3}, idempotency_key="k-1"))
            sim.sim.clear_faults()
    assert isinstance(again, dict) and again["job_id"] == first["job_id"] and again["existing"]
    assert isinstance(same, dict) and same["job_id"] == keyed["job_id"]


async def test_concurrent_submits_of_one_key_make_one_job(tmp_path: Path) -> None:
    """Twenty submits racing with one key: one job, every answer names it."""
    answers: list[dict[str, Any]] = []
    with trio.fail_after(30):
        async with open_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                prepared = [rig.outbox.prepare(push(idempotency_key="race")) for _ in range(20)]

                async def one(item: Any) -> None:
                    answers.append(await rig.outbox.submit(item))

                async with trio.open_nursery() as nursery:
                    for item in prepared:
                        nursery.start_soon(one, item)
                counts = rig.counts()
            sim.sim.clear_faults()
    assert len({a["job_id"] for a in answers}) == 1
    assert sorted(a["existing"] for a in answers) == [False] + [True] * 19
    assert counts["pending"] + counts["in_flight"] + counts["done"] == 1


async def test_submit_many_writes_a_batch_and_answers_per_item(tmp_path: Path) -> None:
    """One write for the batch; duplicates inside it share the first job; refusals pass."""
    with trio.fail_after(30):
        async with open_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                items: list[Any] = [rig.outbox.prepare(push(row={"n": n})) for n in range(50)]
                items.append(rig.outbox.prepare(push(row={"n": 0})))  # the same row again
                items.append(BadRequestRefusal("refused by prepare"))
                before = rig.store.usage().entries["jobs"]
                answers = await rig.outbox.submit_many(items)
                after = rig.store.usage().entries["jobs"]
            sim.sim.clear_faults()
    assert after - before == 50
    assert answers[50]["job_id"] == answers[0]["job_id"]  # type: ignore[index]
    assert isinstance(answers[51], BadRequestRefusal)


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (push(row={"big": "x" * 2000}), BadRequestRefusal),
        (push(row={"bad": b"\x00"}), BadRequestRefusal),
        (CallRequest(operation="push_row", path_params={"webhook_id": "w"}), BadRequestRefusal),
        (push(headers={"content-type": "text/csv"}), BadRequestRefusal),
        (push(lane="nowhere"), BadRequestRefusal),
        (CallRequest(operation="push_row", json={"n": 1}), BadRequestRefusal),
        (push(operation="nope"), UnknownOperationRefusal),
        (push(operation="push_keyed", row=[1, 2]), BadRequestRefusal),
    ],
    ids=["too-big", "not-json", "no-body", "content-type", "lane", "no-path", "unknown", "stamp"],
)
async def test_rows_that_can_never_succeed_are_refused_at_submit(
    tmp_path: Path, request_: CallRequest, error: type[Exception]
) -> None:
    """bad_request (or unknown_operation) at once: nothing is written, nothing reaches Clay."""
    with trio.fail_after(30):
        async with open_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            with pytest.raises(error):
                rig.outbox.prepare(request_)
            assert rig.store.usage().entries["jobs"] == 0
    assert sim.sim.stats.clay_requests == 0


async def test_a_key_field_is_stamped_into_the_row(tmp_path: Path) -> None:
    """push_keyed writes the job's key into kiln_key of the stored row."""
    with trio.fail_after(30):
        async with open_simulator() as sim:
            sim.sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                answer = await rig.outbox.submit(
                    rig.outbox.prepare(push(operation="push_keyed", row={"n": 1}))  # type: ignore[arg-type]
                )
                job = rig.jobs.get(answer["job_id"])
            sim.sim.clear_faults()
    assert job is not None and job.key == f"job:{job.id}"
    assert job.request["json"] == {"n": 1, "kiln_key": job.key}


async def test_a_held_source_refuses_new_rows(tmp_path: Path) -> None:
    """A source held at Clay's cap refuses a push with the reason; other sources accept."""
    held = SourceQuota("clay:/v3/sources/webhook/capped").exhausted(1.0)
    with trio.fail_after(30):
        async with open_simulator() as sim:
            async with outbox_rig(tmp_path / "s", sim.url) as rig:
                await rig.jobs.write([quota_put(held)])  # as a 403 would have left it
            async with outbox_rig(tmp_path / "s", sim.url) as rig:  # holds are read at start
                with pytest.raises(BadRequestRefusal) as info:
                    rig.outbox.prepare(push("capped"))
                assert isinstance(rig.outbox.prepare(push("open")), PreparedJob)
    assert info.value.details == {"reason": "quota_exhausted", "source": held.source}


async def test_not_before_delays_the_job(tmp_path: Path) -> None:
    """A job due later stays pending until then, then runs."""
    with trio.fail_after(30):
        async with open_simulator() as sim, outbox_rig(tmp_path / "s", sim.url) as rig:
            later = rig.jobs.now() + 0.5
            prepared = rig.outbox.prepare(push(), not_before=later)
            answer = await rig.outbox.submit(prepared)  # type: ignore[arg-type]
            # Nothing reaches Clay while the job clock is before the due time: checked against
            # that clock, not after a fixed sleep (a slow submit on a loaded machine can take
            # the 0.5 s). The count is read first: a request it counts came before `now()`.
            while True:
                sent = sim.sim.stats.clay_requests
                if rig.jobs.now() >= later:
                    break
                assert sent == 0
                await trio.sleep(0.01)
            await rig.until(lambda: rig.counts()["done"] == 1)
            job = rig.jobs.get(answer["job_id"])
    assert answer["due_at"] == later
    assert job is not None and job.state is JobState.DONE and job.done_at >= later  # type: ignore[operator]
