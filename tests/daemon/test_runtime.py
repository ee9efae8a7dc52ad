"""The daemon's Runtime pieces in-process: the actor roster, stored records, start order, views."""

from __future__ import annotations

import os

import pytest
import trio

from claykiln.actors.writer import Writer
from claykiln.daemon import views
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.runtime import ActorRoster, Runtime, StoredRecords
from claykiln.storage import StorageError, Store

IO_TIMEOUT = 10.0  # seconds; a hang fails instead of stalling CI


# -- ActorRoster --------------------------------------------------------------------------------
async def test_roster_marks_an_actor_running_once_ready_and_stopped_when_it_returns() -> None:
    """An actor is ``running`` from its ``started()`` until it returns, then ``stopped``."""
    finish = trio.Event()

    async def actor(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await finish.wait()

    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            roster = ActorRoster(nursery)
            await roster.start("one", actor)
            assert roster.states == {"one": "running"}
            finish.set()
        assert roster.states == {"one": "stopped"}


async def test_roster_start_raises_what_the_actor_raises_before_ready() -> None:
    """An actor failing before ``started()`` makes ``start`` raise; its state is ``stopped``."""

    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("no such device")

    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            roster = ActorRoster(nursery)
            with pytest.raises(OSError, match="no such device"):
                await roster.start("broken", broken)
    assert roster.states == {"broken": "stopped"}


# -- StoredRecords ------------------------------------------------------------------------------
async def test_stored_records_load_what_persist_queued_once_committed(
    store: Store, writer: Writer
) -> None:
    """A persisted record is read back by key after the writer's barrier; others are None."""
    records = StoredRecords(store, writer, "breakers")
    records.persist("clay", {"state": "open", "since": 12.5})
    with trio.fail_after(IO_TIMEOUT):
        await writer.write([])
    assert records.load("clay") == {"state": "open", "since": 12.5}
    assert records.load("elsewhere") is None


async def test_stored_records_refuse_when_the_writer_inbox_is_full(store: Store) -> None:
    """With the writer's inbox full, ``persist`` raises StorageError instead of losing it."""
    idle = Writer(store, inbox_size=1)  # never started: nothing drains its inbox
    records = StoredRecords(store, idle, "gate")
    records.persist("clay", {"closed_until": 1.0})
    with pytest.raises(StorageError, match="inbox is full; gate/clay not persisted"):
        records.persist("clay", {"closed_until": 2.0})


# -- start_runtime and the views over it (the ``runtime`` fixture: tests/daemon/conftest.py) -
async def test_start_runtime_starts_every_actor_in_dependency_order(runtime: Runtime) -> None:
    """Writer, breakers, gate, lanes, one pool per upstream, the outbox's scheduler, then
    the event hub and the metrics textfile: all running, in that order."""
    assert list(runtime.actors.states.items()) == [
        ("writer", "running"),
        ("idempotency", "running"),
        ("cache", "running"),
        ("breakers", "running"),
        ("gate", "running"),
        ("lanes", "running"),
        ("upstream.clay", "running"),
        ("scheduler", "running"),
        ("health", "running"),
        ("events", "running"),
        ("metrics", "running"),
    ]
    assert set(runtime.pools) == {"clay"}
    assert views.health(runtime) == "healthy"


async def test_status_is_the_header_then_one_section_per_component(runtime: Runtime) -> None:
    """``status`` keys: the header, then ``STATUS_SECTIONS`` in order; sections read the runtime."""
    status = views.status(runtime)
    header = ["version", "pid", "uptime_s", "health", "config", "socket"]
    assert list(status) == header + [name for name, _ in views.STATUS_SECTIONS]
    assert status["version"] == "0+test"
    assert status["socket"] == str(runtime.config.daemon.socket)
    assert status["server"]["connections"] == 0
    assert status["actors"] == dict(runtime.actors.states)
    assert set(status["upstreams"]) == {"clay"}


async def test_health_is_unhealthy_when_an_actor_stopped(runtime: Runtime) -> None:
    """A stopped actor makes the daemon ``unhealthy`` at the health monitor's next reading, and
    is named stuck (what the watchdog reports)."""
    runtime.actors.states["lanes"] = "stopped"
    with trio.fail_after(5):
        while views.health(runtime) != "unhealthy":
            await trio.sleep(0.05)
    assert "lanes" in runtime.health.snapshot.stuck


async def test_peer_checks_follow_the_running_config(runtime: Runtime) -> None:
    """With no allowed uids/gids anyone connects; admin is root or this uid unless configured."""
    stranger = PeerCred(pid=1, uid=os.geteuid() + 4242, gid=65534)
    assert views.is_allowed(runtime, stranger)
    assert not views.is_admin(runtime, stranger)
    assert views.is_admin(runtime, PeerCred(pid=1, uid=os.geteuid(), gid=0))
