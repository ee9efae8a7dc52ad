"""Who connects and how they leave, against a real daemon (issue 12 items 4, 7, 12; issue 9.4).

Peers of other uids and groups are forked children of this (root) test process that drop to
``nobody`` before connecting; the socket and its directories are opened to them. Each test
failed on the daemon before the fix (no per-uid cap, groups read from /proc after accept, no
reply for a half-closed caller, EOF instead of ``shutting_down`` at the drain's end).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import pytest
import trio
from kiln_harness import KilnProcess, clay_config
from raw_peer import RawPeer, request

from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

NOBODY = 65534
CLIENTS_GID = 4242  # groups the children get; they need not exist on the host
ADMINS_GID = 4243

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="forks peers of other uids: needs root")


def _config(simulator: RunningSimulator, *, daemon: str = "", limits: str = "") -> str:
    text = clay_config(simulator.url, extra=f"\n[daemon.limits]\n{limits}\n")
    return text.replace("[daemon]\n", f'[daemon]\nsocket_mode = "0666"\n{daemon}', 1)


async def _started(kiln: Factory, simulator: RunningSimulator, **kw: str) -> KilnProcess:
    proc = kiln(_config(simulator, **kw))
    for path in (proc.root.parent, proc.root):  # let a peer of another uid reach the socket
        path.chmod(0o755)
    await proc.start()
    return proc


def _child(
    path: str, groups: Sequence[int], gain: Sequence[int] | None, payload: bytes, fds: list[int]
) -> None:
    """In the forked child: become nobody with ``groups``, connect, maybe take ``gain`` as
    groups after connecting, say so, wait for the go, send ``payload``, report every frame."""
    ready_w, go_r, result_w = fds
    signal.alarm(30)  # never outlive a failed test
    os.setgroups(list(groups))
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, 0)  # saved uid root: may take groups after connecting
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    if gain is not None:
        os.seteuid(0)
        os.setgroups(list(gain))
        os.seteuid(NOBODY)
    os.write(ready_w, b"C")
    os.read(go_r, 1)
    frames: list[Any] = []
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    try:
        sock.sendall(payload)
    except OSError:
        pass  # refused at connect: the daemon's notification is still to be read
    try:
        while len(frames) < payload.count(b"\x94\x00"):
            data = sock.recv(65536)
            if not data:
                break
            unpacker.feed(data)
            frames.extend(unpacker)
            if frames and frames[-1][0] == 2:  # protocol_error: the daemon closes
                break
    except OSError:
        pass
    os.write(result_w, msgpack.packb(frames))


class Peer:
    """A forked child connected as nobody (see ``_child``); ``result`` is what it was told."""

    def __init__(self, proc: KilnProcess, groups: Sequence[int], gain: Sequence[int] | None):
        self.pipes = [os.pipe() for _ in range(3)]
        ready, go, result = self.pipes
        payload = request(1, "hello") + request(2, "breaker.list")
        self.pid = os.fork()
        if self.pid == 0:  # the child: no trio, no return
            code = 1
            try:
                _child(str(proc.socket), groups, gain, payload, [ready[1], go[0], result[1]])
                code = 0
            finally:
                os._exit(code)
        for fd in (ready[1], go[0], result[1]):
            os.close(fd)

    async def connected(self) -> None:
        assert await trio.to_thread.run_sync(os.read, self.pipes[0][0], 1) == b"C"

    async def result(self) -> list[Any]:
        """Let the child send its requests; every frame it got back."""
        os.write(self.pipes[1][1], b"G")
        raw = b""
        while chunk := await trio.to_thread.run_sync(os.read, self.pipes[2][0], 65536):
            raw += chunk
        _, status = await trio.to_thread.run_sync(os.waitpid, self.pid, 0)
        for fd in (self.pipes[0][0], self.pipes[1][1], self.pipes[2][0]):
            os.close(fd)
        assert os.waitstatus_to_exitcode(status) == 0
        frames: list[Any] = msgpack.unpackb(raw)
        return frames


async def _as_nobody(proc: KilnProcess, groups: Sequence[int] = ()) -> list[Any]:
    peer = Peer(proc, groups, None)
    await peer.connected()
    return await peer.result()


async def test_one_uid_cannot_take_every_connection(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Past max_connections_per_uid a uid is refused (too_many_connections, logged once a
    second with uid and pid however many are refused); another uid still gets in."""
    limits = "max_connections = 8\nmax_connections_per_uid = 3\n"
    proc = await _started(kiln, simulator, limits=limits)
    with trio.fail_after(30):
        mine = [await RawPeer.connect(proc.socket) for _ in range(3)]
        for n, peer in enumerate(mine):
            assert (await peer.call(n, "hello"))[3]["protocol"] == 1
        for _ in range(20):
            extra = await RawPeer.connect(proc.socket)
            said = await extra.until_closed()
            assert said[0][:2] == [2, "protocol_error"]
            refusal = said[0][2][0]
            assert refusal["code"] == "too_many_connections"
            assert "uid 0 already holds 3" in refusal["message"]
            assert "max_connections_per_uid" in refusal["message"]
        hello, _ = await _as_nobody(proc)
        assert hello[3]["protocol"] == 1
    refused = [e for e in proc.events("conn.refused") if e["uid"] == 0]
    assert 1 <= len(refused) <= 3  # 20 refusals, damped to one line per second
    assert refused[0]["reason"] == "too many connections for the uid"
    assert refused[0]["pid"] == os.getpid() and refused[0]["limit"] == 3
    assert await proc.stop() == 0


async def test_supplementary_groups_count_as_they_were_at_connect(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """allowed_gids and admin_gids match supplementary groups, read from the socket as they
    were at connect(): groups a process takes afterwards (or that /proc shows for its pid by
    the time the daemon accepts) do not count."""
    daemon = f"allowed_gids = [{CLIENTS_GID}]\nadmin_gids = [{ADMINS_GID}]\n"
    proc = await _started(kiln, simulator, daemon=daemon)
    with trio.fail_after(60):
        hello, listed = await _as_nobody(proc, [CLIENTS_GID, ADMINS_GID])
        assert hello[3]["admin"] is True and listed[2] is None
        hello, _ = await _as_nobody(proc, [CLIENTS_GID])
        assert hello[3]["admin"] is False
        outsider = await _as_nobody(proc, [])
        assert outsider[0][2][0]["code"] == "forbidden"
        # The daemon is stopped while the peers connect, then take groups, so it accepts them
        # only after the change.
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            promoted = Peer(proc, [CLIENTS_GID], [CLIENTS_GID, ADMINS_GID])
            joined = Peer(proc, [], [CLIENTS_GID])
            await promoted.connected()
            await joined.connected()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        hello, _ = await promoted.result()
        assert hello[3]["admin"] is False
        said = await joined.result()
        assert said[0][2][0]["code"] == "forbidden"
    assert await proc.stop() == 0


async def test_a_half_closed_caller_gets_its_reply(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A caller that sends a call and shuts its write side still reads the answer."""
    proc = await _started(kiln, simulator)
    simulator.sim.set_faults(Faults(latency=0.5, path_prefix="/public"))
    with trio.fail_after(20):
        peer = await RawPeer.connect(proc.socket)
        await peer.send(request(1, "call", {"operation": "me"}), request(2, "hello"))
        await peer.stream.send_eof()
        said = await peer.until_closed()
    by_id = {frame[1]: frame for frame in said}
    assert by_id[1][2] is None and by_id[1][3]["status"] == 200
    assert by_id[2][3]["protocol"] == 1
    assert await proc.stop() == 0


async def _hanging_call(proc: KilnProcess, simulator: RunningSimulator) -> RawPeer:
    simulator.sim.set_faults(Faults(hang=True, path_prefix="/public"))
    peer = await RawPeer.connect(proc.socket)
    await peer.send(request(1, "call", {"operation": "me", "deadline_ms": 60_000}))
    while simulator.sim.stats.hanging < 1:
        await trio.sleep(0.01)
    return peer


def _grace(seconds: str) -> Callable[[str], str]:
    return lambda text: text.replace('grace_period = "5s"', f'grace_period = "{seconds}"')


@pytest.mark.parametrize("second_sigterm", [False, True])
async def test_callers_cut_by_the_drain_get_shutting_down(
    kiln: Factory, simulator: RunningSimulator, second_sigterm: bool
) -> None:
    """When the grace period runs out, or a second SIGTERM cuts it short, a call still in
    flight is answered shutting_down (started: true), not left with a bare EOF."""
    proc = kiln(_grace("30s" if second_sigterm else "1s")(_config(simulator)))
    await proc.start()
    with trio.fail_after(25):
        peer = await _hanging_call(proc, simulator)
        proc.signal(signal.SIGTERM)
        if second_sigterm:
            while not proc.events("daemon.stopping"):
                await trio.sleep(0.01)
            proc.signal(signal.SIGTERM)
        said = await peer.until_closed()
        assert await proc.wait() == 0
    assert len(said) == 1 and said[0][1] == 1
    error = said[0][2]
    assert error["code"] == "shutting_down"
    assert error["details"] == {"started": True}
    assert proc.events("daemon.drained")[0]["complete"] is False
    if second_sigterm:
        assert proc.events("daemon.drain_cut_short")
