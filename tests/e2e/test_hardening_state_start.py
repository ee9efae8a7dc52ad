"""Start-up against a hostile state directory, with real daemon processes: each failure is one
``daemon.start_failed`` line and exit 1, never a traceback; deleting ``kiln.lock`` lets no
second daemon open the same store."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

Factory = Callable[..., KilnProcess]
NOWHERE = "http://127.0.0.1:9"  # no upstream is called in these tests


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty read-only tmpfs (root can write anywhere else; needs root to mount)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def failed_start(proc: KilnProcess) -> tuple[int, str]:
    """Start ``proc`` expecting it to exit before READY=1: its exit status and its error."""
    with pytest.raises(AssertionError, match="exited"):
        await proc.start(timeout=20)
    status = await proc.wait()
    assert "Traceback" not in proc.log_text(), proc.log_tail()
    failed = proc.events("daemon.start_failed")
    assert len(failed) == 1, proc.log_tail()
    assert failed[0]["level"] == "error"
    return status, str(failed[0]["error"])


async def test_state_dir_that_is_a_file(kiln: Factory) -> None:
    """A state directory path that is a regular file: start_failed naming it, exit 1."""
    proc = kiln(clay_config(NOWHERE))
    proc.state_dir.write_text("not a directory\n")
    with trio.fail_after(30):
        status, error = await failed_start(proc)
    assert status == 1
    assert f"{proc.state_dir} exists but is not a directory" in error
    assert "--state-dir" in error


async def test_state_dir_under_a_file(kiln: Factory) -> None:
    """A state directory below a regular file: start_failed, exit 1."""
    proc = kiln(clay_config(NOWHERE))
    (proc.root / "plain").write_text("x")
    proc.state_dir = proc.root / "plain" / "state"
    with trio.fail_after(30):
        status, error = await failed_start(proc)
    assert status == 1
    assert "is not a directory" in error


async def test_read_only_state_dir(kiln: Factory, read_only_dir: Path) -> None:
    """A state directory on a read-only filesystem: start_failed saying it cannot be written."""
    proc = kiln(clay_config(NOWHERE))
    proc.state_dir = read_only_dir
    with trio.fail_after(30):
        status, error = await failed_start(proc)
    assert status == 1
    assert "cannot be written" in error
    assert "Read-only file system" in error


async def test_socket_dir_not_writable(kiln: Factory, read_only_dir: Path) -> None:
    """A socket path in a directory the daemon cannot write: start_failed naming the socket,
    exit 1, and the store it opened is closed cleanly (daemon.stopped)."""
    proc = kiln(clay_config(NOWHERE))
    proc.socket = read_only_dir / "kiln.sock"
    with trio.fail_after(30):
        status, error = await failed_start(proc)
    assert status == 1
    assert f"cannot listen on the socket {proc.socket}" in error
    assert "Read-only file system" in error
    assert proc.events("daemon.stopped")


async def test_socket_dir_that_cannot_be_made(kiln: Factory) -> None:
    """A socket path below a regular file: start_failed, exit 1."""
    proc = kiln(clay_config(NOWHERE))
    (proc.root / "plain").write_text("x")
    proc.socket = proc.root / "plain" / "kiln.sock"
    with trio.fail_after(30):
        status, error = await failed_start(proc)
    assert status == 1
    assert "cannot listen on the socket" in error


async def test_deleted_lock_file_lets_no_second_daemon_in(kiln: Factory) -> None:
    """With kiln.lock deleted under a running daemon, a second daemon on the same state
    directory is still refused (the store directory itself is locked); the first serves on."""
    first = kiln(clay_config(NOWHERE), name="first")
    with trio.fail_after(60):
        await first.start()
        (first.state_dir / "kiln.lock").unlink()
        second = kiln(clay_config(NOWHERE), name="second")
        second.state_dir = first.state_dir
        status, error = await failed_start(second)
        assert status == 1
        assert "another kiln daemon is using the state directory" in error
        assert "the store directory" in error
        assert first.proc is not None and first.proc.poll() is None
        assert await first.stop() == 0
        # Once the first is gone the lock is free again.
        third = kiln(clay_config(NOWHERE), name="third")
        third.state_dir = first.state_dir
        await third.start()
        assert await third.stop() == 0


async def test_second_daemon_refused_by_kiln_lock(kiln: Factory) -> None:
    """The usual case still holds: a second daemon on a held state directory exits 1."""
    first = kiln(clay_config(NOWHERE), name="first")
    with trio.fail_after(60):
        await first.start()
        second = kiln(clay_config(NOWHERE), name="second")
        second.state_dir = first.state_dir
        status, error = await failed_start(second)
        assert status == 1
        assert "kiln.lock" in error
        assert await first.stop() == 0
