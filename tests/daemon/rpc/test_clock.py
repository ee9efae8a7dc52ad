"""``run_clock``: the run's own clock in one call (daemon/rpc/clock.py)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from claykiln.daemon.rpc.clock import run_clock


async def test_it_reads_what_trio_reads_and_follows_a_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = run_clock()
    assert now() == trio.current_time()
    await trio.sleep(42.5)  # the autojump clock jumps: no real time passes
    assert now() == trio.current_time()
    autojump_clock.jump(7)
    assert now() == trio.current_time()


def test_outside_a_run_it_says_so() -> None:
    with pytest.raises(RuntimeError, match="must be called from async context"):
        run_clock()
