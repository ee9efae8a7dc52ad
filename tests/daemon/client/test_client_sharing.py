"""One client shared by threads, or by a parent and its forked child: every reply is the caller's.

Against the fixture server (``fixture_server.py``), whose ``echo`` answers each call with its
own arguments, so a reply read by the wrong caller shows. Blocking code runs in worker threads
on the real clock; no assertion is about timing. The same against a real daemon:
``tests/e2e/test_client_fork.py``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import trio
from fixture_server import FixtureServer, in_thread, run_asyncio

from claykiln.daemon import AsyncioClient, Client, TrioClient

TEST_TIMEOUT = 30.0
CALLS = 200


def wrong_replies(kiln: Client, side: str) -> list[int]:
    """Make CALLS echo calls tagged ``side``; the indexes whose reply was not their own."""
    return [
        i
        for i in range(CALLS)
        if kiln.request("echo", {"side": side, "i": i}) != {"side": side, "i": i}
    ]


def in_child(body: Any) -> int:
    """Run ``body()`` in a forked child; it exits 0 when body returns True (never returns)."""
    code = 1
    try:
        code = 0 if body() else 2
    finally:
        os._exit(code)


async def test_sync_client_shared_by_8_threads(server: FixtureServer) -> None:
    """8 threads calling through one blocking client each get every one of their own replies."""
    kiln = Client(server.path, timeout=10)
    wrong: dict[str, list[int]] = {}

    async def thread(n: int) -> None:
        wrong[f"t{n}"] = await in_thread(lambda: wrong_replies(kiln, f"t{n}"))

    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(thread, n)
    kiln.close()
    assert wrong == {f"t{n}": [] for n in range(8)}
    assert server.accepted == 1


async def test_sync_client_shared_across_fork(server: FixtureServer) -> None:
    """After os.fork() parent and child call through one client at once; each reads only its
    own replies (the child opens its own connection)."""
    kiln = Client(server.path, timeout=10)

    def parent() -> tuple[list[int], int]:
        assert kiln.request("echo", {"warm": 1}) == {"warm": 1}  # connected before the fork
        pid = os.fork()
        if pid == 0:
            in_child(lambda: wrong_replies(kiln, "child") == [])
        wrong = wrong_replies(kiln, "parent")
        _, status = os.waitpid(pid, 0)
        return wrong, os.waitstatus_to_exitcode(status)

    with trio.fail_after(TEST_TIMEOUT):
        wrong, child_exit = await in_thread(parent)
        assert await in_thread(lambda: kiln.request("echo", {"after": 1})) == {"after": 1}
    kiln.close()
    assert (wrong, child_exit) == ([], 0)
    assert server.accepted == 2


async def test_asyncio_client_used_in_a_forked_childs_own_loop(server: FixtureServer) -> None:
    """An asyncio client connected before os.fork() works in the child under its own loop,
    while the parent keeps using it: each side reads only its own replies."""

    async def calls(kiln: AsyncioClient, side: str) -> list[int]:
        replies = await asyncio.gather(
            *(kiln.request("echo", {"side": side, "i": i}) for i in range(CALLS))
        )
        return [i for i, r in enumerate(replies) if r != {"side": side, "i": i}]

    def child(kiln: AsyncioClient) -> bool:
        outcome: list[list[int]] = []
        runner = threading.Thread(target=lambda: outcome.append(asyncio.run(calls(kiln, "child"))))
        runner.start()
        runner.join()
        return outcome == [[]]

    async def parent() -> tuple[list[int], int]:
        kiln = AsyncioClient(server.path, timeout=10)
        assert await kiln.request("echo", {"warm": 1}) == {"warm": 1}
        pid = os.fork()
        if pid == 0:
            in_child(lambda: child(kiln))
        wrong = await calls(kiln, "parent")
        _, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, pid, 0)
        await kiln.aclose()
        return wrong, os.waitstatus_to_exitcode(status)

    with trio.fail_after(TEST_TIMEOUT):
        assert await in_thread(run_asyncio(parent)) == ([], 0)
    assert server.accepted == 2


async def test_trio_client_refuses_to_be_used_after_fork(server: FixtureServer) -> None:
    """A TrioClient belongs to its trio.run: in a forked child it says so instead of mixing
    replies."""
    async with TrioClient(server.path) as kiln:
        assert await kiln.hello()

        def fork_and_call() -> int:
            pid = os.fork()
            if pid == 0:

                def body() -> bool:
                    try:
                        trio.run(kiln.hello)
                    except RuntimeError as exc:
                        return "create a new TrioClient in the child" in str(exc)
                    return False

                in_child(body)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)

        with trio.fail_after(TEST_TIMEOUT):
            assert await in_thread(fork_and_call) == 0
            assert await kiln.request("echo", {"still": 1}) == {"still": 1}
    assert server.accepted == 1
