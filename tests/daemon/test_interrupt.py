"""``until_sigint``: Ctrl-C for the interactive commands, as a cancellation (a real SIGINT)."""

from __future__ import annotations

import os
import signal

import trio

from claykiln.daemon.interrupt import until_sigint


async def test_a_run_that_ends_returns_its_result() -> None:
    async def work(a: int, b: int) -> int:
        await trio.lowlevel.checkpoint()
        return a + b

    with trio.fail_after(5):
        assert await until_sigint(work, 2, 3) == (5, False)


async def test_sigint_cancels_the_run_and_its_shielded_cleanup_runs() -> None:
    """A real SIGINT to this process: the run is cancelled (no KeyboardInterrupt anywhere), its
    shielded cleanup completes, and the call says it was interrupted."""
    cleaned: list[str] = []

    async def work() -> str:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()
                cleaned.append("stopped")
        return "never"

    with trio.fail_after(5):
        assert await until_sigint(work) == (None, True)
    assert cleaned == ["stopped"]
