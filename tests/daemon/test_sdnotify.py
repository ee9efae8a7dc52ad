"""sd_notify against a real datagram socket; socket activation through systemd-socket-activate."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from claykiln.daemon import sdnotify

RECV_TIMEOUT = 5.0  # seconds; a lost datagram fails the test instead of hanging it
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    sdnotify._last_failure.clear()


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path and exported as NOTIFY_SOCKET, as systemd does."""
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, f"socket path too long for AF_UNIX: {path}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_with_status_reaches_the_socket(receiver: socket.socket) -> None:
    """ready() sends READY=1 and a STATUS line as one datagram and reports success."""
    assert sdnotify.ready(status="serving 3 upstreams")
    assert recv(receiver) == "READY=1\nSTATUS=serving 3 upstreams"


def test_lifecycle_messages(receiver: socket.socket) -> None:
    """stopping, watchdog and status send their exact protocol lines."""
    assert sdnotify.stopping()
    assert recv(receiver) == "STOPPING=1"
    assert sdnotify.watchdog()
    assert recv(receiver) == "WATCHDOG=1"
    assert sdnotify.ready()
    assert recv(receiver) == "READY=1"


def test_status_text_cannot_inject_fields(receiver: socket.socket) -> None:
    """Newlines in status text become spaces, so a status cannot smuggle READY=1 or the like."""
    assert sdnotify.status("degraded\nREADY=1")
    assert recv(receiver) == "STATUS=degraded READY=1"


def test_reloading_carries_monotonic_usec(receiver: socket.socket) -> None:
    """reloading() sends RELOADING=1 with CLOCK_MONOTONIC in microseconds (as systemd expects)."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv(receiver).split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """An '@name' NOTIFY_SOCKET addresses the abstract namespace."""
    name = f"claykiln-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.watchdog()
        assert recv(sock) == "WATCHDOG=1"


def test_unset_notify_socket_is_a_quiet_no_op() -> None:
    """Without NOTIFY_SOCKET every helper returns False and logs nothing."""
    with capture_logs() as captured:
        assert sdnotify.ready() is False
        assert sdnotify.watchdog() is False
    assert captured == []


def test_missing_socket_is_a_logged_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NOTIFY_SOCKET nobody listens on returns False and logs sdnotify.send_failed."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    with capture_logs() as captured:
        assert sdnotify.ready(status="x") is False
    (entry,) = captured
    assert entry["event"] == "sdnotify.send_failed"
    assert entry["log_level"] == "warning"
    assert entry["keys"] == ["READY", "STATUS"]
    assert "No such file" in entry["error"]


def test_a_repeated_failure_is_logged_once_until_a_send_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that went away costs one warning, not one per watchdog period."""
    path = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    with capture_logs() as captured:
        assert [sdnotify.watchdog() for _ in range(5)] == [False] * 5
    assert [e["event"] for e in captured] == ["sdnotify.send_failed"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert sdnotify.watchdog() is True
    path.unlink()
    with capture_logs() as captured:
        assert sdnotify.watchdog() is False  # a new outage after a success is reported again
    assert [e["event"] for e in captured] == ["sdnotify.send_failed"]


def test_unsupported_address_is_a_logged_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """An address that is neither a path nor '@abstract' (e.g. vsock:) is reported, not sent."""
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:9999")
    with capture_logs() as captured:
        assert sdnotify.watchdog() is False
    assert [e["event"] for e in captured] == ["sdnotify.send_failed"]


@pytest.mark.timeout(20)
def test_full_receiver_queue_fails_instead_of_blocking(receiver: socket.socket) -> None:
    """When the receiver stops reading, notify returns False instead of blocking the caller."""
    with capture_logs() as captured:
        results = [sdnotify.watchdog() for _ in range(5000)]
    assert results[0] is True
    assert False in results
    assert captured[0]["event"] == "sdnotify.send_failed"


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_USEC is read in seconds; a foreign WATCHDOG_PID, zero or junk mean None."""
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for junk in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", junk)
        assert sdnotify.watchdog_interval() is None


def test_listen_fds_for_another_process_is_empty_and_unsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LISTEN_* meant for another pid yields no sockets and is removed from the environment."""
    assert sdnotify.listen_fds() == []
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "kiln")
    assert sdnotify.listen_fds() == []
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)


def test_listen_fds_malformed_raises_and_unsets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed LISTEN_FDS for this pid is a clear SocketActivationError; env is unset."""
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "two")
    with pytest.raises(sdnotify.SocketActivationError, match="LISTEN_FDS='two'"):
        sdnotify.listen_fds()
    assert "LISTEN_FDS" not in os.environ


CHILD = """
import json, os, socket
from claykiln.daemon import sdnotify
pairs = sdnotify.listen_fds_with_names()
report = {
    "fds": [(name, s.fileno(), s.family == socket.AF_UNIX, s.type == socket.SOCK_STREAM,
             s.getsockname(), os.get_inheritable(s.fileno())) for name, s in pairs],
    "env_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}
print(json.dumps(report), flush=True)
conn, _ = pairs[0][1].accept()
conn.sendall(b"served on the passed socket")
conn.close()
"""


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")
async def test_listen_fds_from_systemd_socket_activate(tmp_path: Path) -> None:
    """A socket passed by systemd-socket-activate arrives as fd 3 with its name and serves."""
    assert SOCKET_ACTIVATE is not None
    path = str(tmp_path / "kiln.sock")
    cmd = [SOCKET_ACTIVATE, "-l", path, "--fdname=kiln", sys.executable, "-c", CHILD]
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stderr is not None and proc.stdout is not None
            banner = b""
            while b"Listening on" not in banner:
                chunk = await proc.stderr.receive_some()
                assert chunk, f"socket-activate exited early: {banner!r}"
                banner += chunk
            stream = await trio.open_unix_socket(path)  # this connection triggers the exec
            async with stream:
                reply = b""
                while chunk := await stream.receive_some():
                    reply += chunk
            out = b""
            while chunk := await proc.stdout.receive_some():
                out += chunk
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    report = json.loads(out)
    assert report["fds"] == [["kiln", 3, True, True, path, False]]
    assert report["env_left"] == []
    assert reply == b"served on the passed socket"
