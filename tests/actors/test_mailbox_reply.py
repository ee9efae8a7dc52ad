"""The reply slot of the shared actor plumbing: ``Reply`` parks its one asker on itself and
``set`` / ``fail`` reschedule it directly (no Event, no parking lot), with the same contract an
Event-backed slot had: a checkpoint either way, the first answer wins, a cancelled asker leaves
the slot unanswered, a second waiter is refused."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from claykiln.actors.mailbox import Reply, Then


async def test_the_asker_gets_the_value_set_after_it_parked() -> None:
    reply: Reply[int] = Reply()
    got: list[int] = []
    async with trio.open_nursery() as nursery:

        async def ask() -> None:
            got.append(await reply.wait())

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert not reply.done and got == []
        reply.set(7)
        reply.set(8)  # ignored: the first answer wins
        reply.fail(RuntimeError("late"))  # ignored too
        assert reply.done
    assert got == [7]


async def test_a_failed_slot_raises_its_error_in_the_asker() -> None:
    reply: Reply[int] = Reply()
    async with trio.open_nursery() as nursery:

        async def fail_soon() -> None:
            await trio.testing.wait_all_tasks_blocked()
            reply.fail(KeyError("gone"))

        nursery.start_soon(fail_soon)
        with pytest.raises(KeyError, match="gone"):
            await reply.wait()


async def test_waiting_on_an_answered_slot_is_still_a_checkpoint() -> None:
    reply: Reply[str] = Reply()
    reply.set("ready")
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await reply.wait()
    # Unhurried, the same slot answers at once.
    assert await reply.wait() == "ready"


async def test_a_cancelled_asker_leaves_the_slot_unanswered_and_is_not_woken(
    autojump_clock: Any,
) -> None:
    reply: Reply[int] = Reply()
    with trio.move_on_after(1) as scope:
        await reply.wait()
    assert scope.cancelled_caught
    assert not reply.done
    # Setting it later wakes nobody (the cancelled task is not rescheduled twice) and a new
    # asker gets the value.
    reply.set(3)
    assert await reply.wait() == 3


async def test_a_second_waiter_is_refused() -> None:
    reply: Reply[int] = Reply()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply.wait)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="one asker"):
            await reply.wait()
        reply.set(1)


def test_then_calls_its_callback_once_without_an_asker() -> None:
    seen: list[BaseException | None] = []
    then = Then(seen.append)
    assert not then.done
    then.set(None)
    then.fail(RuntimeError("late"))
    assert then.done and seen == [None]
    failed = Then(seen.append)
    error = OSError("disk")
    failed.fail(error)
    assert seen == [None, error]
