"""``subscribe`` end to end: a real daemon, real Unix sockets, the simulator, the client library.

Proves what docs/protocol.md promises subscribers: events in the order the daemon logged them,
ticks on time, a stalled subscriber that costs the callers nothing and learns what it lost, a
subscribed connection that is never closed as idle, subscriptions that end with their
connection, and the three client flavors.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs
import msgpack
import pytest
import trio
from kiln_harness import KilnProcess, clay_config
from outbox_harness import outbox_config, push

from claykiln.daemon import AsyncioClient, BadRequest, Client, TrioClient
from claykiln.daemon.simulator import RunningSimulator

Factory = Callable[..., KilnProcess]


def _config(simulator: RunningSimulator, daemon: str = "") -> str:
    text = clay_config(simulator.url)
    # clay_config opens with its own [daemon] table: add keys to it rather than a second one.
    return text.replace('grace_period = "5s"\n', 'grace_period = "5s"\n' + daemon, 1)


async def _started(kiln: Factory, simulator: RunningSimulator, daemon: str = "") -> KilnProcess:
    proc = kiln(_config(simulator, daemon))
    await proc.start()
    return proc


class RawSubscriber:
    """A msgpack-rpc peer on a plain socket, as another language would write it."""

    def __init__(self, path: str, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(path)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.replies: dict[int, Any] = {}
        self.notes: list[tuple[str, dict[str, Any]]] = []

    def request(self, msgid: int, method: str, args: dict[str, Any]) -> None:
        self.sock.sendall(msgpack.packb([0, msgid, method, [args]]))

    async def read_until(self, done: Callable[[], bool], *, idle: float = 0.3) -> None:
        """Read until ``done()`` (bounded by the caller's fail_after)."""
        self.sock.setblocking(False)
        while not done():
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                return
            self.unpacker.feed(data)
            for msg in self.unpacker:
                if msg[0] == 1:
                    self.replies[msg[1]] = (msg[2], msg[3])
                elif msg[0] == 2:
                    self.notes.append((msg[1], msg[2][0]))

    def events(self) -> list[dict[str, Any]]:
        return [args for method, args in self.notes if method == "event"]

    def close(self) -> None:
        self.sock.close()


async def test_events_arrive_in_the_order_the_daemon_logged_them(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Breaker and gate events, interleaved from two breakers and a gate, reach a subscriber
    in exactly the order of the daemon's log; per breaker the states follow the commands."""
    proc = await _started(kiln, simulator)
    sub = RawSubscriber(str(proc.socket))
    plan = ["open", "closed", "reset", "disabled", "reset", "open", "reset"]
    with trio.fail_after(30):
        sub.request(1, "subscribe", {"topics": ["breaker", "gate"]})
        await sub.read_until(lambda: 1 in sub.replies)
        assert sub.replies[1][0] is None
        assert sub.replies[1][1]["topics"] == ["breaker", "gate"]
        async with TrioClient(str(proc.socket)) as client:
            for state in plan:
                await client.breaker_force("clay", state)
                await client.breaker_force("clay-webhook", state)
            # Clay's webhook limit at 1/s burst 1: the second push meets a 429 (Retry-After 1).
            sim = simulator.sim
            sim.update_settings(attrs.evolve(sim.settings, webhook_rate=1.0, webhook_burst=1))
            for n in range(2):
                push = {"path_params": {"webhook_id": "w1"}, "json": {"n": n}}
                await client.call("push_row", **push)
            sim.update_settings(attrs.evolve(sim.settings, webhook_rate=1000.0, webhook_burst=1000))
            await sub.read_until(lambda: any(e["event"] == "gate.opened" for e in sub.events()))
        expected = 2 * len(plan)
        await sub.read_until(
            lambda: sum(e["event"] == "breaker.forced" for e in sub.events()) >= expected
        )
    got = [(e["event"], e["fields"].get("key") or e["fields"].get("gate")) for e in sub.events()]
    logged = [
        (line["event"], line.get("key") or line.get("gate"))
        for line in proc.events()
        if line.get("event", "").partition(".")[0] in ("breaker", "gate")
    ]
    assert got == logged[: len(got)]
    for key in ("clay", "clay-webhook"):
        states = [
            e["fields"]["reason"]
            for e in sub.events()
            if e["event"] == "breaker.forced" and e["fields"]["key"] == key
        ]
        assert states == [f"forced_{state}" for state in plan]
    assert got.index(("gate.closed", "clay")) < got.index(("gate.opened", "clay"))
    assert all(e["dropped"] == 0 for e in sub.events())
    sub.close()


async def _call_rate(path: str, calls: int, tasks: int) -> float:
    """Calls per second of ``tasks`` callers making ``calls`` calls of ``me`` in all."""
    async with TrioClient(path) as client:
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):

                async def caller() -> None:
                    for _ in range(calls // tasks):
                        assert (await client.call("me"))["status"] == 200

                nursery.start_soon(caller)
        return calls / (time.perf_counter() - began)


async def _make_events(path: str, stop: trio.Event) -> int:
    """Force the webhook breaker back and forth until ``stop`` (events for subscribers)."""
    made = 0
    async with TrioClient(path) as client:
        while not stop.is_set():
            await client.breaker_force("clay-webhook", "open" if made % 2 else "closed")
            made += 1
    return made


async def test_a_stalled_subscriber_does_not_slow_calls_and_counts_its_losses(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """The same calls with and without a subscriber that never reads (ticks every 100 ms and a
    stream of breaker events): throughput stays within a generous ratio, and once it reads
    again every notification says how many it lost."""
    sim = simulator.sim
    sim.update_settings(attrs.evolve(sim.settings, public_rate=1e6, public_burst=1_000_000))
    proc = await _started(kiln, simulator, 'tick_interval = "100ms"\n')
    path = str(proc.socket)
    calls, tasks = 1200, 16
    rates: dict[str, list[float]] = {"alone": [], "stalled": []}
    stalled: RawSubscriber | None = None
    with trio.fail_after(240):  # a safety net: 5,000 calls and the reads, on a loaded machine
        await _call_rate(path, 200, tasks)  # warm up the pool
        for side in ("alone", "stalled", "stalled", "alone"):
            if side == "stalled" and stalled is None:
                stalled = RawSubscriber(path, rcvbuf=4096)
                stalled.request(1, "subscribe", {"buffer": 8})  # every topic
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_make_events, path, stop)
                rates[side].append(await _call_rate(path, calls, tasks))
                stop.set()
        assert stalled is not None
        # It never read: the daemon's socket buffer filled and its buffer dropped the rest.
        await stalled.read_until(lambda: bool(stalled.notes) and stalled.notes[-1][1]["dropped"])
        await trio.sleep(0.5)  # a few more ticks arrive now that it reads
        await stalled.read_until(lambda: len(stalled.notes) > 0 and _ticks_after_drop(stalled))
    alone = sum(rates["alone"]) / 2
    with_stalled = sum(rates["stalled"]) / 2
    print(f"call rates alone {rates['alone']} with a stalled subscriber {rates['stalled']}")
    assert with_stalled >= 0.5 * alone, rates
    dropped = [args["dropped"] for _, args in stalled.notes]
    assert dropped == sorted(dropped)  # a running count
    assert dropped[-1] > 0
    stalled.close()


def _ticks_after_drop(sub: RawSubscriber) -> bool:
    return sum(1 for method, args in sub.notes if method == "tick" and args["dropped"]) >= 2


async def test_a_subscribed_connection_is_never_idle(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """With idle_timeout 1 s, a subscriber to rare events stays connected and gets them."""
    config = _config(simulator).replace(
        "[upstreams.clay]", '[daemon.limits]\nidle_timeout = "1s"\n\n[upstreams.clay]', 1
    )
    proc = kiln(config)
    await proc.start()
    sub = RawSubscriber(str(proc.socket))
    idle = RawSubscriber(str(proc.socket))
    with trio.fail_after(30):
        sub.request(1, "subscribe", {"topics": ["breaker"]})
        idle.request(1, "hello", {})
        await sub.read_until(lambda: 1 in sub.replies)
        await idle.read_until(lambda: 1 in idle.replies)
        await trio.sleep(2.5)
        async with TrioClient(str(proc.socket)) as client:
            await client.breaker_force("clay", "open")
        await sub.read_until(lambda: bool(sub.events()))
        await idle.read_until(lambda: False)  # the idle one is closed: EOF ends the read
    assert sub.events()[0]["fields"]["reason"] == "forced_open"
    assert proc.events("conn.idle_closed")
    sub.close()
    idle.close()


async def test_subscriptions_end_with_their_connection(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Closing the socket ends its subscriptions; unsubscribe ends one; bad ones are refused."""
    proc = await _started(kiln, simulator)
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            sub = RawSubscriber(str(proc.socket))
            sub.request(1, "subscribe", {"topics": ["tick"]})
            sub.request(2, "subscribe", {"topics": ["alert"]})
            sub.request(3, "subscribe", {"topics": ["nope"]})
            await sub.read_until(lambda: len(sub.replies) == 3)
            assert sub.replies[3][0]["code"] == "bad_request"
            assert "nope" in sub.replies[3][0]["message"]
            await _wait_subscriptions(client, 2)
            first = sub.replies[1][1]["subscription"]
            sub.request(4, "unsubscribe", {"subscription": first})
            await sub.read_until(lambda: 4 in sub.replies)
            assert sub.replies[4][1]["subscription"] == first
            await _wait_subscriptions(client, 1)
            with pytest.raises(BadRequest, match="no subscription"):
                await client.request("unsubscribe", {"subscription": first + 1})
            sub.close()
            await _wait_subscriptions(client, 0)


async def _wait_subscriptions(client: TrioClient, count: int) -> None:
    """Until the metrics (shared answers, a moment old at most) say ``count`` are open."""
    while await _subscriptions(client) != count:
        await trio.sleep(0.05)


async def _subscriptions(client: TrioClient) -> int:
    text = (await client.metrics())["text"]
    for line in text.splitlines():
        if line.startswith("claykiln_subscriptions "):
            return int(float(line.split()[1]))
    raise AssertionError(text)


async def test_the_three_client_flavors_subscribe(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Client, TrioClient and AsyncioClient each open a subscription: the reply carries the
    latest tick, ticks follow, an event arrives, and a bad topic raises BadRequest."""
    proc = await _started(kiln, simulator, 'tick_interval = "200ms"\n')
    path = str(proc.socket)

    def sync_side() -> list[str]:
        with Client(path) as kiln_client, kiln_client.subscribe(["tick", "breaker"]) as sub:
            assert sub.info["tick"]["lanes"]
            got = [sub.receive(timeout=5).method]
            kiln_client.breaker_force("clay", "open")
            while "event" not in got:
                got.append(sub.receive(timeout=5).method)
            kiln_client.breaker_force("clay", "reset")
        with Client(path) as kiln_client, pytest.raises(BadRequest):
            kiln_client.subscribe(["nope"]).open()
        return got

    async def asyncio_side() -> str:
        async with AsyncioClient(path) as kiln_client, kiln_client.subscribe(["tick"]) as sub:
            assert sub.info["topics"] == ["tick"]
            note = await sub.receive(timeout=5)
            return note.method

    with trio.fail_after(30):
        got = await trio.to_thread.run_sync(sync_side)
        assert got[0] == "tick" and "event" in got
        async with TrioClient(path) as client, client.subscribe(["tick"], buffer=2) as sub:
            assert sub.info["buffer"] == 2
            seqs = []
            async for note in sub:
                seqs.append(note.args["seq"])
                if len(seqs) == 3:
                    break
            assert seqs == sorted(seqs)
        method = await trio.to_thread.run_sync(asyncio.run, asyncio_side())
        assert method == "tick"


async def test_a_dead_letter_reaches_a_dlq_subscriber(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A submitted row Clay refuses for good (a wrong webhook token) is a dlq.dead event with
    its job id and reason, and the next tick counts it in the outbox."""
    simulator.sim.configure_webhook("locked", token="not-the-daemons-token")
    config = outbox_config(simulator.url)
    proc = kiln(
        config.replace('grace_period = "5s"\n', 'grace_period = "5s"\ntick_interval = "200ms"\n')
    )
    await proc.start()
    sub = RawSubscriber(str(proc.socket))
    with trio.fail_after(30):
        sub.request(1, "subscribe", {"topics": ["dlq", "tick"]})
        await sub.read_until(lambda: 1 in sub.replies)
        async with TrioClient(str(proc.socket)) as client:
            job = await client.submit("push_row", **push("locked", {"n": 1}))
        await sub.read_until(lambda: any(e["event"] == "dlq.dead" for e in sub.events()))
        await sub.read_until(
            lambda: any(m == "tick" and a["outbox"]["dead"] == 1 for m, a in sub.notes)
        )
    dead = next(e for e in sub.events() if e["event"] == "dlq.dead")
    assert dead["topic"] == "dlq" and dead["alert"] is True
    assert dead["fields"]["job_id"] == job["job_id"]
    sub.close()
