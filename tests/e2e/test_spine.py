"""The spine end to end: a real daemon process, real Unix socket, real LMDB, every client flavor."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import AsyncioClient, BadRequest, Client, ShuttingDown, TrioClient
from claykiln.daemon.cli.render import render_status
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]


def _raw_exchange(path: str, payload: bytes, *, read_until_close: bool = True) -> list[Any]:
    """Send raw bytes on a fresh connection; return every frame received until close/timeout."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    try:
        sock.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon closed on us mid-frame (oversized input): read what it said
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    frames: list[Any] = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            unpacker.feed(data)
            frames.extend(unpacker)
            if not read_until_close:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return frames


async def _started(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, **kw))
    await proc.start()
    return proc


async def test_hello_and_status_over_every_client_flavor(
    kiln: Factory, simulator: RunningSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """hello and status answer over the sync, trio and asyncio clients."""
    proc = await _started(kiln, simulator)
    path = str(proc.socket)

    def sync_side() -> tuple[dict[str, Any], dict[str, Any]]:
        with Client(path) as client:
            return client.hello(), client.status()

    def asyncio_side() -> tuple[dict[str, Any], dict[str, Any]]:
        async def go() -> tuple[dict[str, Any], dict[str, Any]]:
            async with AsyncioClient(path) as client:
                return await client.hello(), await client.status()

        return asyncio.run(go())

    with trio.fail_after(20):
        async with TrioClient(path) as client:
            trio_hello, trio_status = await client.hello(), await client.status()
        sync_hello, sync_status = await trio.to_thread.run_sync(sync_side)
        aio_hello, aio_status = await trio.to_thread.run_sync(asyncio_side)
    for hello in (trio_hello, sync_hello, aio_hello):
        assert hello["protocol"] == 1
        assert hello["server"].startswith("claykiln ")
        assert hello["limits"]["max_frame"] == 1024 * 1024
    for status in (trio_status, sync_status, aio_status):
        assert status["pid"] == proc.proc.pid  # type: ignore[union-attr]
        assert status["health"] == "healthy"
        assert set(status["actors"]) >= {"writer", "breakers", "gate", "lanes", "upstream.clay"}
        process = status["process"]
        assert process["rss_bytes"] > 1_000_000 and process["threads"] >= 1
        assert process["gc"]["frozen"] > 1000  # start-up objects moved out of the collector
        assert len(process["gc"]["collections"]) == 3
        assert all(state == "running" for state in status["actors"].values())
        assert status["storage"]["max_map_size"] > 0
    render_status(trio_status)  # what `kiln status` prints on a terminal
    shown = capsys.readouterr().out
    assert f"pid {trio_status['pid']}" in shown and "healthy" in shown
    assert "memory " in shown and "upstream.clay" in shown and "critical" in shown
    assert await proc.stop() == 0


async def test_hundred_pipelined_requests_on_one_connection(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """100 requests written back to back on one connection are all answered, matched by id."""
    proc = await _started(kiln, simulator)
    frames = b"".join(
        msgpack.packb([0, i, "hello" if i % 2 else "status", [{}]]) for i in range(100)
    )
    with trio.fail_after(20):
        replies = await trio.to_thread.run_sync(_collect_replies, str(proc.socket), frames, 100)
    assert sorted(r[1] for r in replies) == list(range(100))
    for _, msgid, error, result in replies:
        assert error is None
        assert ("protocol" in result) if msgid % 2 else ("uptime_s" in result)
    # And through the trio client, concurrently on one connection.
    async with TrioClient(str(proc.socket)) as client:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await client.hello()

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
    assert len(results) == 100
    assert await proc.stop() == 0


def _collect_replies(path: str, payload: bytes, count: int) -> list[Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(payload)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    out: list[Any] = []
    while len(out) < count:
        data = sock.recv(65536)
        assert data, "connection closed before every reply arrived"
        unpacker.feed(data)
        out.extend(unpacker)
    sock.close()
    return out


HOSTILE: list[tuple[str, bytes, str, bool]] = [
    # (name, bytes, expected code, connection stays usable)
    ("random bytes", b"\xc1\xc1\xc1\xff\x00garbage", "bad_request", False),
    (
        "frame over the limit",
        msgpack.packb([0, 1, "hello", [{"x": "y" * 2_000_000}]]),
        "frame_too_large",
        False,
    ),
    (
        "deep nesting",
        msgpack.packb(
            [
                0,
                7,
                "hello",
                [{"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}],
            ]
        ),
        "bad_request",
        True,
    ),
    ("huge declared array", b"\xdd\xff\xff\xff\xff", "frame_too_large", False),
    ("not an array", msgpack.packb({"hello": 1}), "bad_request", False),
    ("wrong request length", msgpack.packb([0, 7, "hello"]), "bad_request", True),
    ("non-string method", msgpack.packb([0, 7, 42, [{}]]), "bad_request", True),
    ("unknown method", msgpack.packb([0, 7, "rm -rf", [{}]]), "unknown_method", True),
    ("args not a map", msgpack.packb([0, 7, "hello", [1, 2, 3]]), "bad_request", True),
    ("unknown frame type", msgpack.packb([9, 7, "hello", [{}]]), "bad_request", False),
    ("bad msgid", msgpack.packb([0, -5, "hello", [{}]]), "bad_request", False),
]


async def test_hostile_input_never_kills_the_daemon(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Each hostile frame gets a clear error (or a protocol_error and close); others go on."""
    proc = await _started(kiln, simulator)
    path = str(proc.socket)
    async with TrioClient(path) as bystander:
        for name, payload, code, keeps in HOSTILE:
            follow_up = msgpack.packb([0, 99, "hello", [{}]]) if keeps else b""
            with trio.fail_after(15):
                frames = await trio.to_thread.run_sync(
                    lambda p=payload, f=follow_up: (
                        _raw_exchange(path, p + f, read_until_close=False)
                        if f
                        else _raw_exchange(path, p)
                    )
                )
                if keeps and len(frames) < 2:
                    frames += await trio.to_thread.run_sync(
                        _raw_exchange, path, payload + follow_up
                    )
            assert frames, name
            first = frames[0]
            if first[0] == 1:
                assert first[2]["code"] == code, (name, first)
                assert first[2]["message"], name
            else:
                assert first[0] == 2 and first[1] == "protocol_error", (name, first)
                assert first[2][0]["code"] == code, (name, first)
                assert not keeps, name
            # the bystander connection and fresh connections still work
            assert (await bystander.hello())["protocol"] == 1, name
        with Client(path) as fresh:
            assert fresh.hello()["protocol"] == 1
        status = await bystander.status()
    assert status["server"]["protocol_errors"] >= len(HOSTILE) - 1
    assert proc.proc is not None and proc.proc.poll() is None
    assert await proc.stop() == 0


async def test_pipelined_follow_up_after_recoverable_violation(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A violation with a readable msgid leaves the connection open for the next request."""
    proc = await _started(kiln, simulator)
    payload = msgpack.packb([0, 5, "nope", [{}]]) + msgpack.packb([0, 6, "hello", [{}]])
    with trio.fail_after(15):
        replies = await trio.to_thread.run_sync(_collect_replies, str(proc.socket), payload, 2)
    by_id = {r[1]: r for r in replies}
    assert by_id[5][2]["code"] == "unknown_method"
    assert "hello" in by_id[5][2]["message"]  # names what exists
    assert by_id[6][2] is None and by_id[6][3]["protocol"] == 1
    assert await proc.stop() == 0


async def test_unknown_call_arguments_are_named(kiln: Factory, simulator: RunningSimulator) -> None:
    """A call with a misspelled argument is refused with bad_request naming it."""
    proc = await _started(kiln, simulator)
    async with TrioClient(str(proc.socket)) as client:
        with pytest.raises(BadRequest, match="path_parms"):
            await client.request("call", {"operation": "me", "path_parms": {}})
    assert await proc.stop() == 0


async def test_sigterm_drains_in_flight_calls_and_exits_zero(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """SIGTERM with calls in flight: they finish, new ones get shutting_down, exit 0."""
    proc = await _started(kiln, simulator)
    simulator.sim.set_faults(Faults(latency=1.0, path_prefix="/public"))
    results: list[Any] = []
    # A raw connection, opened before the drain: the client library would resend a refused
    # request to the next instance (details.started is false), hiding the refusal.
    raw = await trio.open_unix_socket(str(proc.socket))
    async with TrioClient(str(proc.socket)) as client:

        async def one() -> None:
            results.append(await client.call("me"))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(one)
                while simulator.sim.stats.delayed < 5:
                    await trio.sleep(0.01)
                proc.signal(signal.SIGTERM)
                # A request that arrives during the drain is refused, not dropped.
                while True:
                    await raw.send_all(msgpack.packb([0, 1, "hello", [{}]]))
                    reply = msgpack.unpackb(await raw.receive_some(65536))
                    if reply[2] is not None:
                        break
                    await trio.sleep(0.01)
    assert reply[2]["code"] == ShuttingDown.CODE
    assert reply[2]["details"] == {"started": False}
    await raw.aclose()
    assert [r["status"] for r in results] == [200] * 5
    assert await proc.wait() == 0
    assert proc.events("daemon.drained")[0]["complete"] is True
    assert proc.events("daemon.stopped")
    assert any("STOPPING=1" in n for n in proc.notifications())
    assert not proc.socket.exists()


async def test_sighup_reload_good_and_bad(kiln: Factory, simulator: RunningSimulator) -> None:
    """SIGHUP applies a good config (new lane size) and keeps the old one on a bad config."""
    proc = await _started(kiln, simulator)
    base = clay_config(simulator.url)
    lanes = (
        '\n[lanes.critical]\nconcurrency = {n}\nqueue = 7\nmax_wait = "1s"\n'
        "[lanes.normal]\nconcurrency = 5\n[lanes.bulk]\nconcurrency = 2\n"
    )
    proc.write_config(base + lanes.format(n=3))
    proc.signal(signal.SIGHUP)
    async with TrioClient(str(proc.socket)) as client:
        with trio.fail_after(15):
            while not proc.events("config.reloaded"):
                await trio.sleep(0.02)
        status = await client.status()
        assert status["lanes"]["lanes"]["critical"]["concurrency"] == 3
        proc.write_config(base + lanes.format(n=4).replace("concurrency = 4", "concurency = 4"))
        proc.signal(signal.SIGHUP)
        with trio.fail_after(15):
            while not proc.events("config.reload_failed"):
                await trio.sleep(0.02)
        failed = proc.events("config.reload_failed")[0]
        assert "concurency" in failed["error"]
        assert failed["alert"] is True
        status = await client.status()
        assert status["lanes"]["lanes"]["critical"]["concurrency"] == 3
        assert (await client.call("me"))["status"] == 200
    assert await proc.stop() == 0


async def test_kill9_keeps_acknowledged_state(kiln: Factory, simulator: RunningSimulator) -> None:
    """A breaker forced open and acknowledged survives kill -9 and a restart."""
    proc = await _started(kiln, simulator)
    async with TrioClient(str(proc.socket)) as client:
        view = await client.breaker_force("clay", "open")
        assert view["state"] == "forced_open"
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    await proc.start()  # the stale socket file is cleared, the store reopens
    async with TrioClient(str(proc.socket)) as client:
        views = {v["key"]: v for v in await client.breaker_list()}
        assert views["clay"]["state"] == "forced_open"
        status = await client.status()
        assert status["storage"]["entries"]["breakers"] >= 1
    received = simulator.sim.stats.clay_requests
    assert received == 0
    assert await proc.stop() == 0


async def test_second_daemon_refuses_a_live_socket(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A second daemon on the same socket path exits 1 and the first keeps serving."""
    first = await _started(kiln, simulator)
    second = kiln(clay_config(simulator.url))
    second.socket = first.socket
    second.state_dir = first.state_dir.parent / "state-b"
    with pytest.raises(AssertionError, match="exited 1 before READY"):
        await second.start(timeout=10)
    assert "another process is listening" in second.log_text()
    with Client(str(first.socket)) as client:
        assert client.hello()["protocol"] == 1
    assert await first.stop() == 0


async def test_a_burst_beyond_the_in_flight_limit_is_paced_not_dropped(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """1,000 inline requests in one write (far above max_in_flight 128) all get their reply."""
    proc = await _started(kiln, simulator)
    frames = b"".join(msgpack.packb([0, i, "hello", [{}]]) for i in range(1000))
    with trio.fail_after(30):
        replies = await trio.to_thread.run_sync(_collect_replies, str(proc.socket), frames, 1000)
    assert sorted(r[1] for r in replies) == list(range(1000))
    assert all(r[2] is None for r in replies)
    assert await proc.stop() == 0


async def test_reload_adds_an_upstream_and_names_what_needs_a_restart(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A reload starts a pool for a new upstream; a changed base_url is reported, not applied."""
    proc = await _started(kiln, simulator)
    added = f"""
[upstreams.mirror]
base_url = "{simulator.url}"
auth = {{ header = "clay-api-key", credential = "clay-api-key" }}
[operations.mirror_me]
upstream = "mirror"
method = "GET"
path = "/public/v0/me"
lane = "critical"
[operations.clay_me]
upstream = "clay"
method = "GET"
path = "/public/v0/me"
lane = "critical"
"""
    base = clay_config(simulator.url)
    proc.write_config(base + added)
    proc.signal(signal.SIGHUP)
    async with TrioClient(str(proc.socket)) as client:
        with trio.fail_after(15):
            while not proc.events("config.reloaded"):
                await trio.sleep(0.02)
        assert (await client.call("mirror_me"))["status"] == 200
        status = await client.status()
        assert status["actors"]["upstream.mirror"] == "running"
        # Now point clay elsewhere and change a restart-only key: both reported, neither applied.
        moved = base.replace(simulator.url, "http://127.0.0.1:9") + added
        moved = moved.replace('log_level = "info"', 'log_level = "info"\nsocket_mode = "0600"')
        proc.write_config(moved)
        proc.signal(signal.SIGHUP)
        with trio.fail_after(15):
            while len(proc.events("config.reloaded")) < 2:
                await trio.sleep(0.02)
        keys = proc.events("config.restart_required")[-1]["keys"]
        assert "upstreams.clay.base_url" in keys
        assert "daemon.socket_mode" in keys
        assert (await client.call("clay_me"))["status"] == 200  # still the running pool
        assert oct(proc.socket.stat().st_mode & 0o777) == "0o660"
    assert await proc.stop() == 0


async def test_watchdog_pings_and_status_reach_systemd(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """With WATCHDOG_USEC set, the daemon sends WATCHDOG=1 at half the interval plus STATUS=."""
    proc = kiln(clay_config(simulator.url))
    await proc.start(env_extra={"WATCHDOG_USEC": "400000"})  # 0.4 s: pings every 0.2 s
    seen: list[str] = []
    with trio.fail_after(15):
        while sum("WATCHDOG=1" in n for n in seen) < 3:
            seen += proc.notifications()
            await trio.sleep(0.05)
    statuses = [n for n in seen if n.startswith("STATUS=")]
    assert statuses and "healthy" in statuses[-1]
    assert await proc.stop() == 0
    assert any("STOPPING=1" in n for n in proc.notifications())
