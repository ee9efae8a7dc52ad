"""The liveness ask of the shared actor plumbing: ``Mailbox.ping`` answers when the actor is
back at its inbox, stays unanswered while it is stuck elsewhere (or wedged on purpose), and
fails once the actor stopped."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from claykiln.actors.mailbox import ActorStopped, Mailbox, mailbox_of


class Echo:
    """A tiny actor on the plumbing; a message ``"block"`` makes its handler hang."""

    def __init__(self) -> None:
        self._mailbox: Mailbox[str] = Mailbox("echo", 16)
        self.release = trio.Event()
        self.handled: list[str] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                for message in await self._mailbox.drain():
                    if message == "block":
                        await self.release.wait()
                    self.handled.append(message)
        finally:
            self._mailbox.stop()


async def test_an_idle_actor_answers_at_once(autojump_clock: Any) -> None:
    """An actor waiting for mail answers its liveness ask without being woken."""
    echo = Echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(echo.run)
        mailbox = mailbox_of(echo)
        assert mailbox is not None
        with trio.fail_after(0.001):
            await mailbox.ping()
        nursery.cancel_scope.cancel()


async def test_a_busy_actor_answers_when_back_at_its_inbox(autojump_clock: Any) -> None:
    """An actor stuck in a handler leaves the ask unanswered; back at its inbox, it answers."""
    echo = Echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(echo.run)
        mailbox = mailbox_of(echo)
        assert mailbox is not None
        mailbox.tell("block")
        await trio.sleep(1)
        with trio.move_on_after(30) as scope:
            await mailbox.ping()
        assert scope.cancelled_caught  # stuck: no answer in 30 s
        echo.release.set()
        with trio.fail_after(1):
            await mailbox.ping()
        assert echo.handled == ["block"]
        nursery.cancel_scope.cancel()


async def test_a_wedged_actor_never_answers_and_its_asks_queue_up(autojump_clock: Any) -> None:
    """``wedge`` (test-only) makes the next drain hang: pings and messages go unanswered."""
    echo = Echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(echo.run)
        mailbox = mailbox_of(echo)
        assert mailbox is not None
        mailbox.wedge()
        mailbox.tell("wake")  # the actor returns to drain, and hangs there
        await trio.sleep(1)
        with trio.move_on_after(60) as scope:
            await mailbox.ping()
        assert scope.cancelled_caught
        mailbox.tell("later")
        assert mailbox.queued == 1 and echo.handled == ["wake"]
        nursery.cancel_scope.cancel()


async def test_a_ping_to_a_stopped_actor_fails(autojump_clock: Any) -> None:
    """A ping waiting on an actor that stops raises ActorStopped; later pings raise at once."""
    echo = Echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(echo.run)
        mailbox = mailbox_of(echo)
        assert mailbox is not None
        mailbox.tell("block")
        await trio.sleep(0.1)

        async def ping_then_record() -> None:
            with pytest.raises(ActorStopped):
                await mailbox.ping()

        nursery.start_soon(ping_then_record)
        await trio.sleep(0.1)
        mailbox.stop()
        await trio.sleep(0.1)
        with pytest.raises(ActorStopped):
            await mailbox.ping()
        nursery.cancel_scope.cancel()


def test_mailbox_of_finds_only_the_plumbing() -> None:
    """``mailbox_of`` reads an actor's ``_mailbox`` and answers None for anything else."""
    assert mailbox_of(object()) is None
    assert mailbox_of(Echo()) is not None
