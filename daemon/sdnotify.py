"""systemd readiness notification and socket activation, hand-written (sd_notify(3)).

No library is both maintained and wheel-installable (sdnotify is unmaintained and swallows
errors, systemd-python has no wheels, cysystemd bundles its own libsystemd), and the protocol is
small: one datagram of newline-separated ``KEY=VALUE`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).

Contract: every notify function returns True when the datagram was sent and False when there
is nowhere to send it (not under systemd) or sending failed. A failure is logged as a warning
(``sdnotify.send_failed``) and never raised; the send never blocks (a full receiver queue is a
failure, not a stall of the trio loop). :func:`listen_fds` follows ``sd_listen_fds(1)``: it
reads and then unsets ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES``.
"""

from __future__ import annotations

import os
import socket
import time

from claykiln.daemon.logs import get_logger

__all__ = [
    "LISTEN_FDS_START",
    "SocketActivationError",
    "listen_fds",
    "listen_fds_with_names",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

LISTEN_FDS_START = 3
_log = get_logger(__name__)


class SocketActivationError(RuntimeError):
    """``LISTEN_FDS`` was set for this process but does not describe usable sockets."""


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to ``$NOTIFY_SOCKET``; see the module contract."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    keys = [line.partition("=")[0] for line in state.splitlines()]
    if address[0] not in "@/":
        _failed(address, keys, "unsupported NOTIFY_SOCKET address (only paths and @abstract)")
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), target)
    except OSError as exc:
        _failed(address, keys, str(exc))
        return False
    _last_failure.clear()
    return True


# The last failure logged: a receiver that went away would otherwise cost a warning every
# watchdog period; the same error is logged once until a send succeeds again.
_last_failure: dict[str, str] = {}


def _failed(address: str, keys: list[str], error: str) -> None:
    if _last_failure.get(address) == error:
        return
    _last_failure[address] = error
    _log.warning("sdnotify.send_failed", notify_socket=address, keys=keys, error=error)


def ready(status: str | None = None) -> bool:
    """``READY=1`` (startup or a reload finished), with an optional ``STATUS=`` line."""
    return notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")


def stopping() -> bool:
    """``STOPPING=1``: the graceful drain has begun."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC``; send :func:`ready` when the reload is done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog() -> bool:
    """``WATCHDOG=1``: send only while the loop and the actors are verifiably alive."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """``STATUS=text``; newlines become spaces so the text cannot inject other fields."""
    return notify(f"STATUS={_one_line(text)}")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from ``WATCHDOG_USEC``, or None when not enabled for us.

    None when unset, unparsable or zero, or when ``WATCHDOG_PID`` is set to another process.
    Ping at half this interval at most.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def listen_fds() -> list[socket.socket]:
    """The sockets systemd passed to this process (empty when not socket-activated)."""
    return [sock for _, sock in listen_fds_with_names()]


def listen_fds_with_names() -> list[tuple[str, socket.socket]]:
    """The passed sockets with their ``FileDescriptorName=`` ("unknown" when unnamed).

    The environment variables are unset in every case, so children never inherit them.
    Raises SocketActivationError when ``LISTEN_PID`` is ours but ``LISTEN_FDS`` is malformed or
    names a descriptor that is not a socket. The returned sockets are close-on-exec.
    """
    pid = os.environ.pop("LISTEN_PID", None)
    count_text = os.environ.pop("LISTEN_FDS", None)
    names_text = os.environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or count_text is None:
        return []
    try:
        count = int(count_text)
    except ValueError:
        count = -1
    if count < 0:
        msg = f"LISTEN_FDS={count_text!r} is not a count of descriptors; check the .socket unit"
        raise SocketActivationError(msg)
    names = names_text.split(":") if names_text else []
    names += ["unknown"] * (count - len(names))
    out: list[tuple[str, socket.socket]] = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            msg = f"LISTEN_FDS passes fd {fd}, which is not a usable socket: {exc}"
            raise SocketActivationError(msg) from exc
        out.append((names[fd - LISTEN_FDS_START], sock))
    return out
