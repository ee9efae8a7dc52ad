"""Binding the Unix socket safely (trio has no Unix listener helper, python-trio/trio#279).

- A socket path a live daemon still answers on is never stolen: ``bind_unix_listener`` connects
  to it first and refuses with ``SocketInUse`` when something accepts.
- A stale socket file (nothing listening: ECONNREFUSED) is removed; any other file at that path
  is left alone and reported.
- The socket gets the configured mode (0660 by default) before the first accept.
- Under systemd socket activation the inherited socket is used as is (mode and owner come from
  kiln.socket).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

import attrs
import trio

__all__ = ["PeerCred", "SocketInUse", "adopt_listener", "bind_unix_listener", "peer_credentials"]

LISTEN_BACKLOG = 512


class SocketInUse(Exception):
    """Another process still accepts connections on this socket path."""


@attrs.frozen
class PeerCred:
    """Who is on the other end: SO_PEERCRED's pid/uid/primary gid, plus supplementary groups."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    def in_groups(self, gids: Iterable[int]) -> bool:
        """True when the peer's primary or any supplementary group is one of ``gids``."""
        return any(g == self.gid or g in self.groups for g in gids)


def peer_groups(pid: int, proc: Path = Path("/proc")) -> frozenset[int]:
    """Supplementary groups of process ``pid`` from /proc (SO_PEERCRED has only the primary).

    Empty when /proc cannot tell (the process is gone, or /proc is hidden).
    """
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line.split()[1:] if g.isdigit())
    return frozenset()


def peer_credentials(sock: trio.socket.SocketType) -> PeerCred:
    """SO_PEERCRED of a connected Unix socket (Linux); -1s when the kernel cannot tell."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return PeerCred(-1, -1, -1)
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid, peer_groups(pid) if pid > 0 else frozenset())


def _probe_live(path: Path) -> bool:
    """True when something accepts connections at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True


def _clear_stale(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        msg = f"{path} exists and is not a socket; remove it or choose another --socket path"
        raise SocketInUse(msg)
    if _probe_live(path):
        msg = (
            f"another process is listening on {path}; stop it first "
            "(is a kiln daemon already running?) or choose another --socket path"
        )
        raise SocketInUse(msg)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def bind_unix_listener(path: Path, mode: int = 0o660) -> trio.socket.SocketType:
    """A listening trio socket at ``path``; raises ``SocketInUse`` instead of stealing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind under a umask that already denies what `mode` denies, so there is no window in
        # which the socket is more open than configured.
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return adopt_listener(sock)


def adopt_listener(fd_sock: socket.socket) -> trio.socket.SocketType:
    """Wrap a socket inherited through systemd socket activation."""
    fd_sock.setblocking(False)
    return trio.socket.from_stdlib_socket(fd_sock)
