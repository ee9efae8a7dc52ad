"""Clients ride through a daemon restart: they wait for the socket and resend what is safe.

Against the fixture server (``fixture_server.py``): started late, dropping its connections,
answering ``shutting_down`` as a draining daemon does. Trio tests run on ``autojump_clock``
(backoff waits jump); the sync and asyncio flavors run in worker threads on the real clock and
never assert on timing. A real daemon killed and restarted: ``tests/e2e/test_client_restart.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio
from fixture_server import HELLO, FixtureServer, in_thread, run_asyncio

from claykiln.daemon import (
    AsyncioClient,
    Client,
    ConnectionLost,
    DaemonUnavailable,
    ShuttingDown,
    TrioClient,
)
from claykiln.daemon.client._resend import MAX_RESENDS

TEST_TIMEOUT = 10.0
ADVERTISING = {**HELLO, "repeat_safe": {"methods": [], "operations": ["me"]}}


def stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on (a daemon killed with -9): ECONNREFUSED."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


@pytest.fixture
def late(tmp_path: Path) -> FixtureServer:
    """A fixture server the test starts itself (``nursery.start(late.serve)``)."""
    return FixtureServer(tmp_path / "k.sock")


@pytest.mark.parametrize("leftover", ["missing", "stale"])
async def test_trio_waits_for_a_daemon_that_starts_late(
    late: FixtureServer, leftover: str, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """A missing or refusing socket is retried with backoff until the daemon listens."""
    if leftover == "stale":
        stale_socket(late.path)
    replies: list[Any] = []
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as apps:

            async def app() -> None:
                async with TrioClient(late.path, connect_timeout=5) as kiln:
                    replies.append(await kiln.hello())

            apps.start_soon(app)
            await trio.sleep(2.0)
            assert replies == []
            await nursery.start(late.serve)
    assert replies == [HELLO]
    assert late.accepted == 1


async def test_trio_gives_up_once_connect_timeout_is_spent(
    late: FixtureServer, autojump_clock: trio.abc.Clock
) -> None:
    """No daemon within connect_timeout: DaemonUnavailable, after waiting that long."""
    with trio.fail_after(TEST_TIMEOUT):
        start = trio.current_time()
        with pytest.raises(DaemonUnavailable) as info:
            async with TrioClient(late.path, connect_timeout=3):
                pass
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
    assert info.value.path == str(late.path)


async def test_trio_resends_what_is_safe_when_the_connection_drops(
    server: FixtureServer,
) -> None:
    """Lost with the connection: retry_safe, keyed and advertised calls are resent and
    answered; the others get ConnectionLost."""
    server.hello = ADVERTISING
    outcomes: dict[str, Any] = {}
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:

            async def attempt(name: str, make: Any) -> None:
                try:
                    outcomes[name] = await make()
                except ConnectionLost as exc:
                    outcomes[name] = exc

            calls = {
                "marked": lambda: kiln.request("held", {"tag": "a"}, retry_safe=True),
                "unmarked": lambda: kiln.request("held", {"tag": "b"}),
                "advertised": lambda: kiln.call("me", json={"hold": "c"}),
                "unsafe_op": lambda: kiln.call("push_row", json={"hold": "d"}),
                "keyed": lambda: kiln.call("push_row", json={"hold": "e"}, idempotency_key="k"),
            }
            async with trio.open_nursery() as nursery:
                for name, make in calls.items():
                    nursery.start_soon(attempt, name, make)
                await server.wait_received(5)
                server.drop_all()
                resent = 3
                while sum(r.method != "hello" for r in server.received) < 5 + resent:
                    await server.wait_received(len(server.received) + 1)
                for tag in "ace":
                    await server.release(tag)
    assert outcomes["marked"] == "a"
    assert outcomes["advertised"]["args"]["operation"] == "me"
    assert outcomes["keyed"]["args"]["idempotency_key"] == "k"
    for name in ("unmarked", "unsafe_op"):
        assert isinstance(outcomes[name], ConnectionLost), name
    assert server.accepted == 2
    assert any(r.method == "hello" for r in server.received)


async def test_trio_resends_a_call_at_most_max_resends_times(server: FixtureServer) -> None:
    """A safe call whose connection keeps breaking gets ConnectionLost after MAX_RESENDS."""
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:
            with pytest.raises(ConnectionLost):
                await kiln.request("drop", retry_safe=True)
    assert server.accepted == 1 + MAX_RESENDS
    assert [r.method for r in server.received] == ["drop"] * (1 + MAX_RESENDS)


async def test_trio_draining_daemon_new_calls_go_elsewhere_old_ones_finish(
    server: FixtureServer,
) -> None:
    """shutting_down retires the connection: calls on it still get their replies; a refusal
    marked started: false is resent on a new connection, an unmarked one only when safe."""
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:
            async with trio.open_nursery() as nursery:
                finished: list[Any] = []

                async def in_flight() -> None:
                    finished.append(await kiln.request("held", {"tag": "old"}))

                nursery.start_soon(in_flight)
                await server.wait_received(1)
                server.draining = {1}
                server.drain_details = {"started": False}
                assert await kiln.request("echo", {"n": 1}) == {"n": 1}  # on connection 2
                await server.release("old")
            assert finished == ["old"]
            server.draining = {2}
            server.drain_details = {}
            with pytest.raises(ShuttingDown):
                await kiln.request("echo", {"n": 2})  # not safe: hello on 3 did not say so
            server.draining = {3}
            assert (await kiln.status())["method"] == "status"  # safe: resent on 4
    assert server.accepted == 4


async def received_holding(server: FixtureServer, tag: str, times: int) -> None:
    """Wait until ``times`` requests carrying ``tag`` (``held`` tag or ``call`` hold) arrived."""

    def count() -> int:
        return sum(
            tag in (r.args.get("tag"), (r.args.get("json") or {}).get("hold"))
            for r in server.received
        )

    while count() < times:
        await server.wait_received(len(server.received) + 1)


async def drop_then_release(server: FixtureServer, tag: str, *, resent: bool) -> None:
    """Drop the connection carrying ``tag``; once it is resent (if expected), answer it."""
    await received_holding(server, tag, 1)
    server.drop_all()
    if resent:
        await received_holding(server, tag, 2)
        await server.release(tag)


async def test_sync_waits_for_a_late_daemon_and_resends_safe_calls(
    late: FixtureServer, nursery: trio.Nursery
) -> None:
    """The blocking client waits for a late daemon, resends a marked call, fails an unmarked one."""
    stale_socket(late.path)
    kiln = Client(late.path, timeout=5, connect_timeout=5)
    replies: list[Any] = []
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as waiting:
            waiting.start_soon(in_thread, lambda: replies.append(kiln.hello()))
            await trio.sleep(0.2)  # the client is waiting (ECONNREFUSED); now the daemon comes
            await nursery.start(late.serve)
        assert replies == [HELLO]
        async with trio.open_nursery() as daemon_side:
            daemon_side.start_soon(lambda: drop_then_release(late, "s", resent=True))
            assert (
                await in_thread(lambda: kiln.request("held", {"tag": "s"}, retry_safe=True)) == "s"
            )
        async with trio.open_nursery() as daemon_side:
            daemon_side.start_soon(lambda: drop_then_release(late, "u", resent=False))
            with pytest.raises(ConnectionLost):
                await in_thread(lambda: kiln.request("held", {"tag": "u"}))
        kiln.close()
    # 1: hello, held s (dropped); 2: s resent, held u (dropped); 3: the hello asked about u
    assert late.accepted == 3


async def test_sync_close_wakes_a_call_waiting_for_the_daemon(late: FixtureServer) -> None:
    """close() from another thread ends a call that waits for a daemon (RuntimeError at once,
    not after connect_timeout)."""
    kiln = Client(late.path, connect_timeout=600)
    outcome: list[BaseException] = []

    def waiting() -> None:
        try:
            kiln.hello()
        except RuntimeError as exc:
            outcome.append(exc)

    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread, waiting)
            await trio.sleep(0.05)  # it is waiting (or not yet started: it fails either way)
            await in_thread(kiln.close)
    assert len(outcome) == 1 and "closed" in str(outcome[0])


async def test_asyncio_waits_for_a_late_daemon_and_resends_safe_calls(
    late: FixtureServer, nursery: trio.Nursery
) -> None:
    """The asyncio client waits for a late daemon and resends a keyed and an advertised call."""
    late.hello = ADVERTISING

    async def app() -> list[Any]:
        async with AsyncioClient(late.path, timeout=5, connect_timeout=5) as kiln:
            keyed = await kiln.call("push_row", json={"hold": "k"}, idempotency_key="key-1")
            advertised = await kiln.call("me", json={"hold": "m"})
            return [keyed["args"]["operation"], advertised["args"]["operation"]]

    async def daemon_side() -> None:
        await trio.sleep(0.2)  # the client is waiting (ENOENT); now the daemon comes
        await nursery.start(late.serve)
        for tag in "km":
            await drop_then_release(late, tag, resent=True)

    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as side:
            side.start_soon(daemon_side)
            assert await in_thread(run_asyncio(app)) == ["push_row", "me"]
    assert late.accepted == 3
