"""Reload's bookkeeping of what needs a restart, and the roster retiring a removed pool."""

from __future__ import annotations

import attrs
import trio
import trio.testing

from claykiln.daemon.config import load_config
from claykiln.daemon.reload import keep_restart_only, pool_changes
from claykiln.daemon.runtime import ActorRoster


def test_a_pool_setting_set_back_to_the_running_value_is_no_change() -> None:
    """base_url changed then set back: the running config keeps the URL in use, so the second
    reload sees no change; of the timeouts only connect is restart-only."""
    running = load_config(None, env={})
    clay = running.upstreams["clay"]
    moved = attrs.evolve(
        running,
        upstreams={
            "clay": attrs.evolve(
                clay,
                base_url="http://elsewhere",
                timeouts=attrs.evolve(clay.timeouts, connect=1.0, request=7.0),
            )
        },
    )
    assert pool_changes(running, moved) == [
        "upstreams.clay.base_url",
        "upstreams.clay.timeouts.connect",
    ]
    kept = keep_restart_only(running, moved).upstreams["clay"]
    assert (kept.base_url, kept.timeouts.connect) == (clay.base_url, clay.timeouts.connect)
    assert kept.timeouts.request == 7.0  # read per call: applied by the reload
    assert pool_changes(keep_restart_only(running, moved), running) == []


async def test_a_retired_actor_is_stopped_and_no_longer_listed() -> None:
    """retire cancels the actor's run and drops it from states; a new start under the same name
    is listed as a new actor, and the old one's end does not touch it."""
    ended: list[str] = []

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            ended.append("run")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            roster = ActorRoster(nursery)
            await roster.start("upstream.x", run)
            roster.retire("upstream.x")
            await roster.start("upstream.x", run)
            await trio.testing.wait_all_tasks_blocked()
            assert ended == ["run"]
            assert roster.states == {"upstream.x": "running"}
            roster.retire("upstream.x")
            await trio.testing.wait_all_tasks_blocked()
            assert ended == ["run", "run"] and roster.states == {}
            roster.retire("upstream.unknown")  # nothing to stop: no error
