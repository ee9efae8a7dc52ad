"""One blocking client shared by threads, or across os.fork(), against a real daemon.

Every call names an operation the daemon does not have (``op-<side>-<i>``), so each reply is
an ``unknown_operation`` error quoting the name it was asked about: a reply read by the wrong
caller shows. Before the client noticed forks, parent and child shared one socket and each saw
about 5 in 100 calls time out or take the other's reply.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import Client, UnknownOperation
from claykiln.daemon.simulator import RunningSimulator

Factory = Callable[..., KilnProcess]
WAIT = 60.0  # seconds a whole scenario may take on this shared 2-core machine
CALLS = 200
THREADS = 8


def wrong_replies(kiln: Client, side: str, calls: int = CALLS) -> list[str]:
    """Make ``calls`` calls tagged ``side``; describe each reply that was not the call's own."""
    wrong = []
    for i in range(calls):
        name = f"op-{side}-{i}"
        try:
            kiln.call(name)
        except UnknownOperation as exc:
            if f"{name!r}" not in exc.message:
                wrong.append(f"{name}: {exc.message[:40]}")
        except Exception as exc:
            wrong.append(f"{name}: {exc!r}")
        else:
            wrong.append(f"{name}: answered")
    return wrong


async def test_one_client_shared_across_fork_parent_and_child_at_once(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """After os.fork() parent and child call through one client at once: every reply matched,
    the child on a connection of its own."""
    proc = kiln(clay_config(simulator.url))
    await proc.start()
    client = Client(proc.socket, timeout=10)

    def parent() -> tuple[list[str], int]:
        client.hello()  # the connection exists before the fork
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if wrong_replies(client, "child") == [] else 2
            finally:
                os._exit(code)
        wrong = wrong_replies(client, "parent")
        _, status = os.waitpid(pid, 0)
        return wrong, os.waitstatus_to_exitcode(status)

    with trio.fail_after(WAIT):
        wrong, child_exit = await trio.to_thread.run_sync(parent)
        assert await trio.to_thread.run_sync(client.hello)  # the parent's connection still works
    client.close()
    assert wrong == []
    assert child_exit == 0


async def test_one_client_shared_by_8_threads(kiln: Factory, simulator: RunningSimulator) -> None:
    """8 threads calling through one blocking client each get every one of their own replies
    (calls are serialized on its one connection)."""
    proc = kiln(clay_config(simulator.url))
    await proc.start()
    client = Client(proc.socket, timeout=10)
    wrong: dict[int, list[str]] = {}

    async def thread(n: int) -> None:
        wrong[n] = await trio.to_thread.run_sync(lambda: wrong_replies(client, f"t{n}", 100))

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for n in range(THREADS):
                nursery.start_soon(thread, n)
    client.close()
    assert wrong == {n: [] for n in range(THREADS)}
