"""Binding the Unix socket safely (trio has no Unix listener helper, python-trio/trio#279).

- A socket path a live daemon still answers on is never stolen: ``bind_unix_listener`` connects
  to it first and refuses with ``SocketInUse`` when something accepts.
- A stale socket file (nothing listening: ECONNREFUSED) is removed; any other file at that path
  is left alone and reported.
- The socket gets the configured mode (0660 by default) before the first accept.
- Under systemd socket activation the inherited socket is used as is (mode and owner come from
  kiln.socket).

Peer credentials (``peer_credentials``) are what the kernel recorded when the peer called
``connect()``: uid, gid and pid from ``SO_PEERCRED``, supplementary groups from
``SO_PEERGROUPS`` (Linux 4.13+). Nothing is read from ``/proc/<pid>`` after accept: a pid can
be reused, and a process can change its groups after connecting. Where the kernel lacks
``SO_PEERGROUPS``, only the primary gid is known (``groups_known`` is False).
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
from typing import Final

import attrs
import trio

__all__ = [
    "SO_PEERGROUPS",
    "PeerCred",
    "SocketInUse",
    "adopt_listener",
    "bind_unix_listener",
    "peer_credentials",
    "peer_groups",
]

LISTEN_BACKLOG = 512
# Linux's option number (include/uapi/asm-generic/socket.h); Python's socket module lacks it.
SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
GROUPS_FIRST_TRY: Final = 64  # groups asked for first; ERANGE asks again for NGROUPS_MAX
NGROUPS_MAX: Final = 65536


class SocketInUse(Exception):
    """Another process still accepts connections on this socket path."""


@attrs.frozen
class PeerCred:
    """Who is on the other end, as the kernel recorded it at ``connect()``: pid, uid (the
    effective uid), primary gid and the supplementary groups (``groups_known`` False where the
    kernel cannot tell them: then only the primary gid counts)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    groups_known: bool = True

    def in_groups(self, gids: Iterable[int]) -> bool:
        """True when the peer's primary or any supplementary group is one of ``gids``."""
        return any(g == self.gid or g in self.groups for g in gids)


def peer_groups(sock: socket.socket | trio.socket.SocketType) -> frozenset[int] | None:
    """The supplementary groups the peer had at ``connect()`` (SO_PEERGROUPS); None when the
    kernel does not support the option."""
    size = GROUPS_FIRST_TRY
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size * 4)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < NGROUPS_MAX:
                size = NGROUPS_MAX  # the kernel says how many only in C; ask for the most
                continue
            return None
        count = len(raw) // 4
        return frozenset(struct.unpack(f"{count}I", raw[: count * 4]))


def peer_credentials(sock: trio.socket.SocketType) -> PeerCred:
    """SO_PEERCRED and SO_PEERGROUPS of a connected Unix socket (Linux); -1s when the kernel
    cannot tell."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return PeerCred(-1, -1, -1, groups_known=False)
    pid, uid, gid = struct.unpack("3i", raw)
    groups = peer_groups(sock)
    if groups is None:
        return PeerCred(pid, uid, gid, groups_known=False)
    return PeerCred(pid, uid, gid, groups)


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
