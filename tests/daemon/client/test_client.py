"""The three client flavors against the fixture server (``fixture_server.py``) on a real socket.

Trio-only tests run on ``autojump_clock``; the sync and asyncio flavors run in worker threads
on the real clock and never assert on timing.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from fixture_server import HELLO, FixtureServer, in_thread, run_asyncio

from claykiln.daemon import (
    AsyncioClient,
    Client,
    ConnectionLost,
    DaemonUnavailable,
    KilnError,
    KilnTimeout,
    ProtocolViolation,
    RateLimited,
    TrioClient,
    UpstreamError,
)

TEST_TIMEOUT = 10.0


# -- trio flavor -------------------------------------------------------------------------------


async def test_trio_round_trip_and_typed_methods(server: FixtureServer) -> None:
    """Each typed method sends its wire method name and only the arguments given."""
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:
            assert await kiln.request("echo", {"x": [1, "two", b"3"]}) == {"x": [1, "two", b"3"]}
            assert await kiln.hello() == HELLO
            assert await kiln.status() == {"method": "status", "args": {}}
            assert (await kiln.breaker_list())["method"] == "breaker.list"
            forced = await kiln.breaker_force("clay", "open")
            assert forced == {"method": "breaker.force", "args": {"name": "clay", "state": "open"}}
            reply = await kiln.call("clay.webhook", path_params={"id": "w1"}, json=None)
            assert reply["args"] == {
                "operation": "clay.webhook",
                "path_params": {"id": "w1"},
                "json": None,
            }
            reply = await kiln.call(
                "op",
                body=b"raw",
                lane="bulk",
                deadline_ms=1500,
                idempotency_key="k1",
                headers={"a": "b"},
                query={"q": 1},
            )
            assert reply["args"] == {
                "operation": "op",
                "body": b"raw",
                "lane": "bulk",
                "deadline_ms": 1500,
                "idempotency_key": "k1",
                "headers": {"a": "b"},
                "query": {"q": 1},
            }
    assert server.accepted == 1


async def test_trio_100_pipelined_calls_out_of_order(
    server: FixtureServer, autojump_clock: trio.abc.Clock
) -> None:
    """100 calls on one connection get their own replies although replies come back reversed."""
    results: dict[int, Any] = {}
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:

            async def one(i: int) -> None:
                results[i] = await kiln.request("slow", {"delay": (100 - i) * 0.01, "value": i})

            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
            assert kiln.in_flight == 0
    assert results == {i: i for i in range(100)}
    assert server.reply_order == list(range(99, -1, -1))
    assert server.accepted == 1
    assert len({req.msgid for req in server.received}) == 100


async def test_trio_error_map_for_every_code(server: FixtureServer) -> None:
    """Every wire code raises its class with code, message, retry_after and details kept."""
    codes = {
        "bad_request": "BadRequest",
        "unknown_method": "UnknownMethod",
        "unknown_operation": "UnknownOperation",
        "frame_too_large": "FrameTooLarge",
        "breaker_open": "BreakerOpen",
        "lane_full": "LaneFull",
        "rate_limited": "RateLimited",
        "timeout": "KilnTimeout",
        "upstream_error": "UpstreamError",
        "idempotency_in_flight": "IdempotencyInFlight",
        "idempotency_mismatch": "IdempotencyMismatch",
        "storage_full": "StorageFull",
        "forbidden": "Forbidden",
        "shutting_down": "ShuttingDown",
        "internal": "InternalError",
        "brand_new_code": "KilnError",
    }
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:
            for code, class_name in codes.items():
                wire = {
                    "code": code,
                    "message": f"m-{code}",
                    "retry_after": 1.5,
                    "details": {"status": 503, "body": "down"},
                }
                with pytest.raises(KilnError) as info:
                    await kiln.request("fail", wire)
                err = info.value
                assert type(err).__name__ == class_name
                assert (err.code, err.message, err.retry_after) == (code, f"m-{code}", 1.5)
                assert err.details == {"status": 503, "body": "down"}
            with pytest.raises(UpstreamError) as upstream:
                await kiln.request(
                    "fail",
                    {
                        "code": "upstream_error",
                        "message": "x",
                        "details": {"status": 502, "body": "bad"},
                    },
                )
            assert (upstream.value.status, upstream.value.body) == (502, "bad")
            assert upstream.value.retry_after is None
            assert await kiln.request("echo", {"still": "usable"}) == {"still": "usable"}
    assert server.accepted == 2  # shutting_down: no new calls on that (draining) connection


async def test_trio_timeout_discards_late_reply(
    server: FixtureServer, autojump_clock: trio.abc.Clock
) -> None:
    """A call past its timeout raises KilnTimeout; its late reply is dropped, not misdelivered."""
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:
            with pytest.raises(KilnTimeout) as info:
                await kiln.request("slow", {"delay": 5, "value": "late"}, timeout=1)
            assert isinstance(info.value, TimeoutError)
            assert info.value.details["stage"] == "client"
            assert kiln.in_flight == 1  # the msgid stays reserved until the late reply
            await server.sent("late").wait()
            assert await kiln.request("echo", {"n": 1}) == {"n": 1}
            assert kiln.in_flight == 0


async def test_trio_cancelled_call_is_abandoned(server: FixtureServer) -> None:
    """A call cancelled from outside leaves no slot behind once its late reply arrives."""
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:
            with trio.CancelScope() as scope:

                async def cancel_when_held() -> None:
                    await server.wait_received(1)
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_when_held)
                    await kiln.request("held", {"tag": "c"})
            assert scope.cancelled_caught
            await server.release("c")
            assert await kiln.request("echo", {}) == {}
            assert kiln.in_flight == 0


async def test_trio_drop_fails_in_flight_then_reconnects(server: FixtureServer) -> None:
    """A dropped connection fails every call in flight with ConnectionLost; the next works."""
    outcomes: list[BaseException] = []
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:

            async def held(tag: str) -> None:
                try:
                    await kiln.request("held", {"tag": tag})
                except ConnectionLost as exc:
                    outcomes.append(exc)

            async with trio.open_nursery() as nursery:
                for tag in "abc":
                    nursery.start_soon(held, tag)
                await server.wait_received(3)
                with pytest.raises(ConnectionLost):
                    await kiln.request("drop")
            assert len(outcomes) == 3
            assert await kiln.request("echo", {"again": True}) == {"again": True}
    assert server.accepted == 2


async def test_trio_protocol_error_notification(server: FixtureServer) -> None:
    """A protocol_error notification fails in-flight calls with ProtocolViolation (its code)."""
    notes: list[tuple[str, dict[str, Any]]] = []
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path, on_notification=lambda m, a: notes.append((m, a))) as k:
            async with trio.open_nursery() as nursery:

                async def held() -> None:
                    with pytest.raises(ProtocolViolation) as info:
                        await k.request("held", {"tag": "p"})
                    assert info.value.code == "frame_too_large"

                nursery.start_soon(held)
                await server.wait_received(1)
                with pytest.raises(ProtocolViolation) as info:
                    await k.request("violate", {"code": "frame_too_large", "message": "too big"})
            assert info.value.code == "frame_too_large"
            assert "too big" in info.value.message
            assert notes == [("protocol_error", {"code": "frame_too_large", "message": "too big"})]
            assert await k.request("echo", {"ok": 1}) == {"ok": 1}
    assert server.accepted == 2


async def test_trio_undecodable_reply_is_a_violation(server: FixtureServer) -> None:
    """Bytes the client cannot decode fail the calls in flight and force a new connection."""
    with trio.fail_after(TEST_TIMEOUT):
        async with TrioClient(server.path) as kiln:
            with pytest.raises(ProtocolViolation):
                await kiln.request("garbage")
            assert await kiln.request("echo", {"ok": 2}) == {"ok": 2}
    assert server.accepted == 2


async def test_trio_connect_in_caller_nursery_and_close(server: FixtureServer) -> None:
    """connect(nursery=) works; aclose fails calls in flight and later calls raise."""
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            kiln = await TrioClient.connect(server.path, nursery=nursery)
            assert await kiln.request("echo", {"v": 1}) == {"v": 1}

            async def held() -> None:
                with pytest.raises(ConnectionLost):
                    await kiln.request("held", {"tag": "never"})

            nursery.start_soon(held)
            await server.wait_received(2)
            await kiln.aclose()
            with pytest.raises(RuntimeError):
                await kiln.request("echo")


async def test_trio_body_exception_is_not_wrapped(server: FixtureServer) -> None:
    """An exception from the `async with` body propagates as itself, not an ExceptionGroup."""
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(ValueError, match="mine"):
        async with TrioClient(server.path):
            raise ValueError("mine")


# -- sync flavor (worker thread, real clock) -----------------------------------------------------


async def test_sync_round_trip_errors_and_drop(server: FixtureServer) -> None:
    """The blocking client round-trips, maps errors, and reconnects after a dropped call."""

    def scenario() -> None:
        with Client(server.path, timeout=5) as kiln:
            assert kiln.request("echo", {"a": 1}) == {"a": 1}
            assert kiln.call("op", json={"x": 1})["args"] == {"operation": "op", "json": {"x": 1}}
            with pytest.raises(RateLimited) as info:
                kiln.request("fail", {"code": "rate_limited", "message": "slow", "retry_after": 2})
            assert info.value.retry_after == 2.0
            with pytest.raises(ConnectionLost):
                kiln.request("drop")
            assert kiln.request("echo", {"b": 2}) == {"b": 2}

    with trio.fail_after(TEST_TIMEOUT):
        await in_thread(scenario)
    assert server.accepted == 2


async def test_sync_timeout_discards_late_reply(server: FixtureServer) -> None:
    """The blocking client's timeout abandons the call; the late reply is dropped later."""
    with trio.fail_after(TEST_TIMEOUT):
        kiln = Client(server.path, timeout=5)
        with pytest.raises(KilnTimeout) as info:
            await in_thread(lambda: kiln.request("held", {"tag": "s"}, timeout=0.05))
        assert info.value.details["stage"] == "client"
        assert kiln.in_flight == 1
        await server.release("s")
        assert await in_thread(lambda: kiln.request("echo", {"n": 2})) == {"n": 2}
        assert kiln.in_flight == 0
        kiln.close()
    assert server.accepted == 1


async def test_sync_idle_close_reconnects_transparently(server: FixtureServer) -> None:
    """A connection the daemon closed while idle is replaced before the next call is sent."""
    with trio.fail_after(TEST_TIMEOUT):
        with Client(server.path, timeout=5) as kiln:
            assert await in_thread(lambda: kiln.request("echo", {"n": 1})) == {"n": 1}
            server.drop_all()
            await trio.testing.wait_all_tasks_blocked()
            assert await in_thread(lambda: kiln.request("echo", {"n": 2})) == {"n": 2}
    assert server.accepted == 2


async def test_sync_protocol_error_and_kiln_socket_env(
    server: FixtureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KILN_SOCKET picks the socket; a protocol_error notification raises ProtocolViolation."""
    monkeypatch.setenv("KILN_SOCKET", str(server.path))

    def scenario() -> None:
        with Client(timeout=5) as kiln:
            assert kiln.socket_path == server.path
            with pytest.raises(ProtocolViolation) as info:
                kiln.request("violate", {"code": "bad_request", "message": "nope"})
            assert info.value.code == "bad_request"
            assert kiln.request("echo", {"c": 3}) == {"c": 3}

    with trio.fail_after(TEST_TIMEOUT):
        await in_thread(scenario)
        assert TrioClient().socket_path == server.path
        assert AsyncioClient().socket_path == server.path


async def test_daemon_unavailable_names_the_path(tmp_path: Path) -> None:
    """All three flavors raise DaemonUnavailable naming the socket and how to fix it."""
    missing = tmp_path / "nobody.sock"
    errors: list[DaemonUnavailable] = []
    brief = 0.05  # connect_timeout: how long each flavor waits for a daemon that never comes
    with trio.fail_after(TEST_TIMEOUT):
        with pytest.raises(DaemonUnavailable) as sync_info:
            await in_thread(lambda: Client(missing, connect_timeout=brief).hello())
        errors.append(sync_info.value)
        with pytest.raises(DaemonUnavailable) as trio_info:
            async with TrioClient(missing, connect_timeout=brief):
                pass
        errors.append(trio_info.value)
        with pytest.raises(DaemonUnavailable) as aio_info:
            await in_thread(
                run_asyncio(lambda: AsyncioClient.connect(missing, connect_timeout=brief))
            )
        errors.append(aio_info.value)
    for err in errors:
        assert isinstance(err, ConnectionError)
        assert err.path == str(missing)
        assert str(missing) in str(err)
        assert "kiln serve" in str(err)
        assert "KILN_SOCKET" in str(err)
        assert err.details["waited_s"] == brief  # it waited its connect_timeout, and says so
        assert f"retried for {brief:g} s" in str(err)


# -- asyncio flavor (asyncio.run in a worker thread) -------------------------------------------


async def test_asyncio_100_pipelined_calls_released_in_reverse(server: FixtureServer) -> None:
    """100 asyncio calls on one connection each get their own reply, delivered in reverse."""

    async def scenario() -> list[Any]:
        async with AsyncioClient(server.path, timeout=5) as kiln:
            calls = [kiln.request("held", {"tag": f"t{i}"}) for i in range(100)]
            results = await asyncio.gather(*calls)
            assert kiln.in_flight == 0
            return results

    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            outcome: list[Any] = []

            async def run() -> None:
                outcome.append(await in_thread(run_asyncio(scenario)))

            nursery.start_soon(run)
            await server.wait_received(100)
            for i in reversed(range(100)):
                await server.release(f"t{i}")
    assert outcome == [[f"t{i}" for i in range(100)]]
    assert server.reply_order == [f"t{i}" for i in reversed(range(100))]
    assert server.accepted == 1


async def test_asyncio_errors_timeout_and_reconnect(server: FixtureServer) -> None:
    """asyncio: errors map, a timeout abandons the call, a drop fails in flight then reconnects."""

    async def scenario() -> None:
        kiln = await AsyncioClient.connect(server.path, timeout=5)
        try:
            with pytest.raises(UpstreamError) as info:
                await kiln.request(
                    "fail", {"code": "upstream_error", "message": "x", "details": {"status": 500}}
                )
            assert info.value.status == 500
            # Never answered (the drop below ends it), not answered late: a reply due after a
            # fixed delay could arrive, on a loaded machine, before the timeout fires or before
            # the abandoned call is counted below.
            with pytest.raises(KilnTimeout) as timeout:
                await kiln.request("held", {"tag": "late"}, timeout=0.01)
            assert timeout.value.details["stage"] == "client"
            held = asyncio.ensure_future(kiln.request("held", {"tag": "gone"}))
            await asyncio.sleep(0)  # let `held` go out before `drop`
            assert kiln.in_flight == 2  # `held` and the abandoned `late`
            with pytest.raises(ConnectionLost):
                await kiln.request("drop")
            with pytest.raises(ConnectionLost):
                await held
            assert await kiln.request("echo", {"back": 1}) == {"back": 1}
        finally:
            await kiln.aclose()
        with pytest.raises(RuntimeError):
            await kiln.request("echo")

    with trio.fail_after(TEST_TIMEOUT):
        await in_thread(run_asyncio(scenario))
    assert server.accepted == 2


async def test_oversized_request_fails_with_the_daemons_reason(server: FixtureServer) -> None:
    """A frame over the daemon's limit fails with ProtocolViolation(frame_too_large), not EPIPE."""
    blob = b"x" * (2 * 1024 * 1024)
    codes: list[str] = []

    def sync_scenario() -> None:
        with Client(server.path, timeout=5) as kiln:
            with pytest.raises(ProtocolViolation) as info:
                kiln.request("echo", {"blob": blob})
            codes.append(info.value.code)
            assert kiln.request("echo", {"after": 1}) == {"after": 1}

    async def asyncio_scenario() -> None:
        async with AsyncioClient(server.path, timeout=5) as kiln:
            with pytest.raises(ProtocolViolation) as info:
                await kiln.request("echo", {"blob": blob})
            codes.append(info.value.code)
            assert await kiln.request("echo", {"after": 2}) == {"after": 2}

    with trio.fail_after(TEST_TIMEOUT):
        await in_thread(sync_scenario)
        async with TrioClient(server.path, timeout=5) as kiln:
            with pytest.raises(ProtocolViolation) as info:
                await kiln.request("echo", {"blob": blob})
            codes.append(info.value.code)
            assert await kiln.request("echo", {"after": 3}) == {"after": 3}
        await in_thread(run_asyncio(asyncio_scenario))
    assert codes == ["frame_too_large"] * 3
    assert server.accepted == 6


async def test_sync_close_from_another_thread_fails_the_blocked_call(server: FixtureServer) -> None:
    """close() in one thread wakes a call blocked in another with ConnectionLost."""
    kiln = Client(server.path, timeout=5)
    outcome: list[BaseException] = []

    def blocked() -> None:
        try:
            kiln.request("held", {"tag": "forever"})
        except ConnectionLost as exc:
            outcome.append(exc)

    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread, blocked)
            await server.wait_received(1)
            await in_thread(kiln.close)
    assert len(outcome) == 1
    with pytest.raises(RuntimeError, match="closed"):
        kiln.request("echo")


# -- docs/protocol.md --------------------------------------------------------------------------

PROTOCOL_DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def _documented_minimal_client() -> str:
    section = PROTOCOL_DOC.read_text().split("## A minimal client in Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the minimal client's code block is missing"
    return match.group(1)


async def test_documented_minimal_client_runs(server: FixtureServer) -> None:
    """The stand-alone client in docs/protocol.md (<= 25 lines) really talks to a server."""
    code = _documented_minimal_client()
    assert len(code.strip().splitlines()) <= 25
    env = {**os.environ, "KILN_SOCKET": str(server.path)}
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-c", code], env=env, capture_stdout=True, check=False
        )
    assert done.returncode == 0
    assert done.stdout.decode().splitlines()[0] == HELLO["server"]
    assert [req.method for req in server.received] == ["hello", "status"]
