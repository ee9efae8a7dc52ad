"""Peer credentials: what the kernel recorded at connect() (SO_PEERCRED, SO_PEERGROUPS)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from claykiln.daemon.rpc.listener import PeerCred, peer_credentials, peer_groups

NOBODY = 65534


@pytest.fixture
def listening() -> Iterator[tuple[socket.socket, Path]]:
    """A listening Unix socket (not accepting) in a directory anyone may enter."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="kiln-"))
    root.chmod(0o755)
    path = root / "l.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    path.chmod(0o777)
    sock.listen(4)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(root, ignore_errors=True)


def _connect_then_change_groups(path: Path, before: list[int], after: list[int]) -> int:
    """Fork a child that connects as nobody with ``before`` groups, then takes ``after`` and
    waits to be killed; returns its pid once it changed groups."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(30)
            os.setgroups(before)
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, 0)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(path))
            os.seteuid(0)
            os.setgroups(after)
            os.seteuid(NOBODY)
            os.write(ready_w, b"C")
            signal.pause()
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"C"
    os.close(ready_r)
    return pid


@pytest.mark.skipif(os.geteuid() != 0, reason="forks a peer of another uid: needs root")
def test_groups_are_those_at_connect_not_those_proc_shows_later(
    listening: tuple[socket.socket, Path],
) -> None:
    """A peer that takes a group after connecting is seen with the groups it connected with,
    although /proc/PID/status already lists the new one when the connection is accepted."""
    sock, path = listening
    pid = _connect_then_change_groups(path, [4242], [4242, 4243])
    try:
        proc_groups = Path(f"/proc/{pid}/status").read_text()
        assert "4243" in next(
            line for line in proc_groups.splitlines() if line.startswith("Groups")
        )
        conn, _ = sock.accept()
        with conn:
            peer = peer_credentials(trio.socket.from_stdlib_socket(conn))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert (peer.pid, peer.uid, peer.gid) == (pid, NOBODY, NOBODY)
    assert peer.groups == frozenset({4242}) and peer.groups_known
    assert peer.in_groups([4242]) and not peer.in_groups([4243])


def test_own_connection_shows_own_groups(listening: tuple[socket.socket, Path]) -> None:
    """Connecting to ourselves: our pid, euid, egid and supplementary groups."""
    sock, path = listening
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    conn, _ = sock.accept()
    with client, conn:
        peer = peer_credentials(trio.socket.from_stdlib_socket(conn))
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert peer.groups == frozenset(os.getgroups())


class _NoPeerGroups:
    """A socket on a kernel without SO_PEERGROUPS (nothing real can stand in for one here)."""

    def getsockopt(self, *args: Any) -> bytes:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")


def test_a_kernel_without_peergroups_leaves_groups_unknown() -> None:
    """Without SO_PEERGROUPS the groups are unknown (None), never guessed from /proc."""
    assert peer_groups(_NoPeerGroups()) is None  # type: ignore[arg-type]


def test_in_groups_matches_primary_or_supplementary() -> None:
    """Allow-lists match the primary gid or any supplementary group."""
    peer = PeerCred(pid=1, uid=1000, gid=1000, groups=frozenset({27, 998}))
    assert peer.in_groups([998])
    assert peer.in_groups([1000])
    assert not peer.in_groups([5, 6])
    assert not peer.in_groups([])
    primary_only = PeerCred(pid=1, uid=1000, gid=1000, groups_known=False)
    assert primary_only.in_groups([1000]) and not primary_only.in_groups([998])
