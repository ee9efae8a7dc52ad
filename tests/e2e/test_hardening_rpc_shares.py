"""Each peer's share of a busy daemon, against a real daemon process (issue 12, the ``abuse``
bench): a flooding process is held back while honest callers keep being answered, and a lone
pipelining client is never held back.

The flooder is a child process (a peer of its own: shares are kept per peer pid); the honest
callers and the lone pipeliner are this test process. Before shares, a flood got a turn every
round whatever its rate and nothing was ever held back (``server.held_back`` did not exist).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio
from kiln_harness import KilnProcess, clay_config
from raw_peer import RawPeer, request

from claykiln.daemon import TrioClient
from claykiln.daemon.simulator import RunningSimulator

Factory = Callable[..., KilnProcess]

# A child that pipelines 512 hello at a time on one connection and reads every reply, until
# SIGTERM; it prints how many answers it got so far at SIGUSR1 and SIGTERM.
FLOODER = """
import signal, socket, sys
import msgpack
path = sys.argv[1]
answers = 0
def report(*_):
    print(answers, flush=True)
def stop(*_):
    report()
    sys.exit(0)
signal.signal(signal.SIGUSR1, report)
signal.signal(signal.SIGTERM, stop)
signal.alarm(120)  # never outlive a failed test
batch = b"".join(msgpack.packb([0, n, "hello", [{}]]) for n in range(512))
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(path)
unpacker = msgpack.Unpacker()
print("ready", flush=True)
while True:
    sock.sendall(batch)
    got = 0
    while got < 512:
        data = sock.recv(262144)
        if not data:
            stop()
        unpacker.feed(data)
        got += sum(1 for _ in unpacker)
    answers += got
"""
HONEST_CONNECTIONS = 16
HONEST_CALLS = 600  # sequential hello per honest connection


async def _started(kiln: Factory, simulator: RunningSimulator, limits: str = "") -> KilnProcess:
    proc = kiln(clay_config(simulator.url, extra=f"\n[daemon.limits]\n{limits}\n"))
    await proc.start()
    return proc


async def _server_status(proc: KilnProcess) -> dict[str, Any]:
    async with TrioClient(str(proc.socket)) as client:
        status: dict[str, Any] = (await client.status())["server"]
        return status


async def _flood_answers(flooder: subprocess.Popen[str]) -> int:
    """How many answers the flooder got so far."""
    assert flooder.stdout is not None
    flooder.send_signal(signal.SIGUSR1)
    return int(await trio.to_thread.run_sync(flooder.stdout.readline))


async def _honest(peer: RawPeer, answers: list[Any], more: Callable[[], bool]) -> None:
    """One honest caller: a hello, wait for its answer, the next one; HONEST_CALLS of them, then
    on while ``more()``."""
    n = 0
    while n < HONEST_CALLS or more():
        await peer.send(request(n, "hello"))
        answers.extend(await peer.frames(1))
        n += 1


def _flooder(proc: KilnProcess) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", FLOODER, str(proc.socket)], stdout=subprocess.PIPE, text=True
    )


async def _beside_flood(
    proc: KilnProcess, flooder: subprocess.Popen[str], *, until_held_back: bool = False
) -> list[Any]:
    """Once the flood runs, the honest callers' answers (all of them called to the end).

    ``until_held_back``: the callers go on past HONEST_CALLS until the daemon has held the
    flood back. How soon it does depends on how much CPU the flooder process gets: beside three
    CPU hogs the same 600 calls each saw it held back anywhere from 2 to 30 times.
    """
    assert flooder.stdout is not None
    assert await trio.to_thread.run_sync(flooder.stdout.readline) == "ready\n"
    honest: list[Any] = []
    held = trio.Event()

    async def watch() -> None:
        while (await _server_status(proc))["held_back"] == 0:
            await trio.sleep(0.1)
        held.set()

    peers = [await RawPeer.connect(proc.socket) for _ in range(HONEST_CONNECTIONS)]
    async with trio.open_nursery() as nursery:
        if until_held_back:
            nursery.start_soon(watch)
        more = (lambda: not held.is_set()) if until_held_back else (lambda: False)
        for peer in peers:
            nursery.start_soon(_honest, peer, honest, more)
    return honest


@pytest.mark.parametrize("limits", ["", 'busy_poll = "0.5ms"'], ids=["default", "busy_poll"])
async def test_a_flooding_peer_is_held_back_while_honest_callers_are_answered(
    kiln: Factory, simulator: RunningSimulator, limits: str
) -> None:
    """A process pipelining hello flat out beside 16 honest callers is held back (it took more
    than its 1/17 share of the busy loop) and still answered; every honest hello is answered.
    The same with busy polling, whose spin between requests counts toward the loop's turns."""
    proc = await _started(kiln, simulator, limits)
    flooder = _flooder(proc)
    try:
        with trio.fail_after(60):
            honest = await _beside_flood(proc, flooder, until_held_back=True)
            server = await _server_status(proc)
            flood = await _flood_answers(flooder)
    finally:
        flooder.terminate()
        await trio.to_thread.run_sync(flooder.communicate)
    assert len(honest) >= HONEST_CONNECTIONS * HONEST_CALLS
    assert all(frame[2] is None and frame[3]["protocol"] == 1 for frame in honest)
    assert server["held_back"] > 0  # the flood waited for its share
    assert flood > 0  # held back, not starved: the flood was answered too
    assert await proc.stop() == 0


async def test_shares_off_never_hold_a_flood_back(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """``share_window = "0s"`` turns shares off: the same flood beside the same honest callers
    is never held back."""
    proc = await _started(kiln, simulator, 'share_window = "0s"')
    flooder = _flooder(proc)
    try:
        with trio.fail_after(60):
            honest = await _beside_flood(proc, flooder)
            server = await _server_status(proc)
    finally:
        flooder.terminate()
        await trio.to_thread.run_sync(flooder.communicate)
    assert len(honest) == HONEST_CONNECTIONS * HONEST_CALLS
    assert server["held_back"] == 0
    assert await proc.stop() == 0


async def test_a_lone_pipelining_client_is_never_held_back(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """One process pipelining 20,000 hello on four connections, nobody else working: its work
    is not capped (``held_back`` stays 0) and every request is answered."""
    proc = await _started(kiln, simulator)
    batch = b"".join(request(n, "hello") for n in range(500))
    answers: list[Any] = []

    async def pipeline(peer: RawPeer) -> None:
        for _ in range(10):
            await peer.send(batch)
            answers.extend(await peer.frames(500))

    with trio.fail_after(60):
        peers = [await RawPeer.connect(proc.socket) for _ in range(4)]
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(pipeline, peer)
        server = await _server_status(proc)
    assert len(answers) == 20_000 and all(frame[2] is None for frame in answers)
    assert server["held_back"] == 0
    assert await proc.stop() == 0
