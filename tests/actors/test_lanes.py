"""The lanes actor: slots, bounded queues, max wait, deadlines, cancellation, reconfigure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from claykiln.actors.errors import BadRequestRefusal, LaneFullRefusal, TimeoutRefusal
from claykiln.actors.lanes import LANES_INBOX_SIZE, LanePolicy, Lanes
from claykiln.actors.mailbox import ActorStopped

POLICIES = {
    "critical": LanePolicy(concurrency=10, queue=5, max_wait=5.0),
    "bulk": LanePolicy(concurrency=2, queue=3, max_wait=5.0),
}


@asynccontextmanager
async def running(
    policies: dict[str, LanePolicy] | None = None,
) -> AsyncIterator[tuple[Lanes, trio.Nursery]]:
    """A started Lanes actor and a nursery for the test's callers; cancelled on exit."""
    lanes = Lanes(POLICIES if policies is None else policies)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(lanes.run)
            yield lanes, nursery
            nursery.cancel_scope.cancel()


async def hold(
    lanes: Lanes,
    name: str,
    release: trio.Event,
    log: list[str] | None = None,
    tag: str = "",
    deadline: float | None = None,
) -> None:
    """Enter lane `name`, note `tag` in `log`, hold the slot until `release` is set."""
    async with lanes.slot(name, deadline):
        if log is not None:
            log.append(tag)
        await release.wait()


async def test_full_lane_rejects_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """N hold, Q wait, and caller N+Q+1 gets LaneFullRefusal(queue_full) without time passing."""
    async with running() as (lanes, nursery):
        release = trio.Event()
        for _ in range(2 + 3):
            nursery.start_soon(hold, lanes, "bulk", release)
        await trio.testing.wait_all_tasks_blocked()
        before = trio.current_time()
        with pytest.raises(LaneFullRefusal) as info:
            async with lanes.slot("bulk", None):
                pytest.fail("a full lane admitted a caller")
        assert trio.current_time() == before
        assert info.value.details == {"lane": "bulk", "reason": "queue_full"}
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 5.0
        await trio.testing.wait_all_tasks_blocked()
        bulk = lanes.stats()["lanes"]["bulk"]
        assert (bulk["active"], bulk["queued"], bulk["rejected"], bulk["saturation"]) == (
            2,
            3,
            1,
            1.0,
        )
        release.set()


async def test_waiter_past_max_wait_gets_lane_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A queued caller with no slot after max_wait gets LaneFullRefusal(max_wait) at that moment."""
    async with running({"one": LanePolicy(concurrency=1, queue=1, max_wait=2.0)}) as (lanes, n):
        release = trio.Event()
        n.start_soon(hold, lanes, "one", release)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(LaneFullRefusal) as info:
            async with lanes.slot("one", None):
                pytest.fail("admitted without a free slot")
        assert trio.current_time() == pytest.approx(start + 2.0)
        assert info.value.details == {"lane": "one", "reason": "max_wait"}
        await trio.testing.wait_all_tasks_blocked()
        assert lanes.stats()["lanes"]["one"]["queued"] == 0
        assert lanes.stats()["lanes"]["one"]["rejected"] == 1
        release.set()


async def test_deadline_before_max_wait_times_out(autojump_clock: trio.testing.MockClock) -> None:
    """A deadline before max_wait gives TimeoutRefusal(stage=lane) when the deadline passes."""
    async with running({"one": LanePolicy(concurrency=1, queue=1, max_wait=5.0)}) as (lanes, n):
        release = trio.Event()
        n.start_soon(hold, lanes, "one", release)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(TimeoutRefusal) as info:
            async with lanes.slot("one", start + 1.5):
                pytest.fail("admitted without a free slot")
        assert trio.current_time() == pytest.approx(start + 1.5)
        assert info.value.details is not None
        assert info.value.details["stage"] == "lane"
        await trio.testing.wait_all_tasks_blocked()
        assert lanes.stats()["lanes"]["one"]["timeouts"] == 1
        release.set()


async def test_cancelled_waiter_task_frees_place(autojump_clock: trio.testing.MockClock) -> None:
    """A queued caller whose task is cancelled withdraws; a newcomer takes its place and enters."""
    async with running({"one": LanePolicy(concurrency=1, queue=1, max_wait=60.0)}) as (lanes, n):
        release, entered = trio.Event(), []
        n.start_soon(hold, lanes, "one", release, entered, "holder")
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as doomed:
            doomed.start_soon(hold, lanes, "one", release, entered, "doomed")
            await trio.testing.wait_all_tasks_blocked()
            assert lanes.views["one"].full
            doomed.cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert not lanes.views["one"].full
        n.start_soon(hold, lanes, "one", release, entered, "newcomer")
        await trio.testing.wait_all_tasks_blocked()
        assert lanes.views["one"].queued == 1
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert entered == ["holder", "newcomer"]


async def test_cancelled_holder_frees_its_slot(autojump_clock: trio.testing.MockClock) -> None:
    """Cancelling a caller that holds the slot hands the slot to the waiter at once."""
    async with running({"one": LanePolicy(concurrency=1, queue=1, max_wait=60.0)}) as (lanes, n):
        never, release, entered = trio.Event(), trio.Event(), []
        async with trio.open_nursery() as holder:
            holder.start_soon(hold, lanes, "one", never, entered, "holder")
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(hold, lanes, "one", release, entered, "waiter")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            holder.cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert entered == ["holder", "waiter"]
        assert trio.current_time() == start
        assert lanes.views["one"].active == 1
        release.set()


async def test_lanes_are_isolated(autojump_clock: trio.testing.MockClock) -> None:
    """A saturated bulk lane does not delay a critical caller."""
    async with running() as (lanes, nursery):
        release = trio.Event()
        for _ in range(5):
            nursery.start_soon(hold, lanes, "bulk", release)
        await trio.testing.wait_all_tasks_blocked()
        assert lanes.views["bulk"].full
        before = trio.current_time()
        async with lanes.slot("critical", before + 0.001):
            assert trio.current_time() == before
            assert lanes.views["critical"].active == 1
        release.set()


async def test_waiters_enter_in_fifo_order(autojump_clock: trio.testing.MockClock) -> None:
    """When slots free one by one, waiters enter in the order they queued."""
    async with running({"one": LanePolicy(concurrency=1, queue=10, max_wait=60.0)}) as (lanes, n):
        entered: list[str] = []

        async def short_hold(tag: str) -> None:
            async with lanes.slot("one", None):
                entered.append(tag)
                await trio.sleep(1.0)

        for tag in ["a", "b", "c", "d", "e"]:
            n.start_soon(short_hold, tag)
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(10.0)
        assert entered == ["a", "b", "c", "d", "e"]


async def test_reconfigure_grow_and_shrink(autojump_clock: trio.testing.MockClock) -> None:
    """Growing admits waiters at once; shrinking lets holders finish and admits below the limit."""
    async with running({"one": LanePolicy(concurrency=1, queue=10, max_wait=60.0)}) as (lanes, n):
        releases = [trio.Event() for _ in range(4)]
        entered: list[str] = []
        for i, release in enumerate(releases):
            n.start_soon(hold, lanes, "one", release, entered, str(i))
            await trio.testing.wait_all_tasks_blocked()
        assert entered == ["0"]
        await lanes.reconfigure({"one": LanePolicy(concurrency=3, queue=10, max_wait=60.0)})
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(entered) == ["0", "1", "2"]  # granted together: wake order is trio's
        await lanes.reconfigure({"one": LanePolicy(concurrency=1, queue=10, max_wait=60.0)})
        releases[0].set()
        releases[1].set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(entered) == 3  # "2" still holds: 1 active, limit 1
        assert lanes.views["one"].active == 1
        releases[2].set()
        await trio.testing.wait_all_tasks_blocked()
        assert entered[3:] == ["3"]
        releases[3].set()


async def test_removed_lane_refuses_new_but_finishes_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A lane removed by reconfigure rejects new entries while its holders finish normally."""
    async with running() as (lanes, nursery):
        release, entered = trio.Event(), []
        nursery.start_soon(hold, lanes, "bulk", release, entered, "in-flight")
        await trio.testing.wait_all_tasks_blocked()
        await lanes.reconfigure({"critical": POLICIES["critical"]})
        with pytest.raises(BadRequestRefusal, match="critical"):
            async with lanes.slot("bulk", None):
                pytest.fail("a removed lane admitted a caller")
        assert lanes.views["bulk"].retired
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert entered == ["in-flight"]
        assert "bulk" not in lanes.views


async def test_unknown_lane_is_a_bad_request(autojump_clock: trio.testing.MockClock) -> None:
    """Naming a lane that does not exist raises BadRequestRefusal listing the lanes that do."""
    async with running() as (lanes, _):
        with pytest.raises(BadRequestRefusal) as info:
            async with lanes.slot("nope", None):
                pytest.fail("an unknown lane admitted a caller")
        assert "'nope'" in str(info.value)
        assert "bulk, critical" in str(info.value)


async def test_release_is_not_dropped_when_inbox_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the inbox full of refusal notices, leaving a slot still releases it (it waits)."""
    async with running({"one": LanePolicy(concurrency=1, queue=1, max_wait=60.0)}) as (lanes, n):
        entered: list[str] = []
        async with lanes.slot("one", None):
            n.start_soon(hold, lanes, "one", trio.Event(), entered, "late")
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(LANES_INBOX_SIZE + 5):  # no checkpoint: the actor cannot drain
                with pytest.raises(LaneFullRefusal):
                    async with lanes.slot("one", None):
                        pass
            assert lanes.dropped > 0  # the inbox really was full
        await trio.testing.wait_all_tasks_blocked()
        assert entered == ["late"]  # the release got through and handed the slot on
        assert lanes.stats()["lost_releases"] == 0
        assert lanes.views["one"].active == 1


async def test_stopped_actor_fails_waiters_and_new_asks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Stopping the actor fails queued callers with ActorStopped; later entries raise at once."""
    lanes = Lanes({"one": LanePolicy(concurrency=1, queue=5, max_wait=60.0)})
    failures: list[BaseException] = []

    async def waiter() -> None:
        try:
            async with lanes.slot("one", None):
                await trio.sleep_forever()
        except ActorStopped as exc:
            failures.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as actor:
                await actor.start(lanes.run)
                outer.start_soon(waiter)
                outer.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                actor.cancel_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert len(failures) == 1  # the queued one; the holder keeps its slot
            outer.cancel_scope.cancel()
        with pytest.raises(ActorStopped):
            async with lanes.slot("one", None):
                pass


async def test_check_refuses_a_full_lane_without_awaiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """check() (the precheck) passes while there is room and raises LaneFullRefusal once full."""
    async with running() as (lanes, nursery):
        release = trio.Event()
        lanes.check("bulk")  # room: no error
        for _ in range(2 + 3):
            nursery.start_soon(hold, lanes, "bulk", release)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(LaneFullRefusal) as info:
            lanes.check("bulk")
        assert info.value.details == {"lane": "bulk", "reason": "queue_full"}
        lanes.check("critical")  # other lanes unaffected
        release.set()
