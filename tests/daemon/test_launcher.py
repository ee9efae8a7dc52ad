"""DaemonProcess against real ``kiln serve`` processes: READY=1, start failures, stop, restart."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from claykiln.daemon.launcher import DaemonProcess, DaemonStartError

PROCESS_TIMEOUT = 30.0  # seconds; a daemon that hangs fails the test instead of stalling it
CONFIG = """\
[daemon]
log_format = "json"
log_level = "info"
grace_period = "2s"

[upstreams.clay]
base_url = "http://127.0.0.1:9"
auth = { header = "clay-api-key", credential = "clay-api-key" }
"""
CREDENTIALS = {"clay-api-key": "test-key-not-a-secret", "clay-webhook-token": "test-token"}


@pytest.fixture
def root() -> Iterator[Path]:
    """A short directory under /tmp (AF_UNIX paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="kiln-dp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_start_returns_at_ready_and_stop_reports_a_clean_exit(root: Path) -> None:
    """start returns once READY=1 arrived (socket up, credentials read); SIGTERM stop exits 0."""
    daemon = DaemonProcess(root, CONFIG, credentials=CREDENTIALS)
    try:
        with trio.fail_after(PROCESS_TIMEOUT):
            await daemon.start()
            assert daemon.proc is not None and daemon.proc.poll() is None
            assert daemon.socket.exists()
            assert daemon.events("daemon.started")  # logged before READY=1
            assert (daemon.creds_dir / "clay-api-key").read_text() == "test-key-not-a-secret\n"
            assert await daemon.stop() == 0
        assert daemon.events(["daemon.stopping", "daemon.stopped"])
        assert any("STOPPING=1" in n for n in daemon.notifications())
        assert await daemon.stop() == 0  # stopping again is harmless
    finally:
        daemon.close()


async def test_exit_before_ready_is_an_error_naming_the_log(root: Path) -> None:
    """A config the daemon refuses: DaemonStartError with the status, log path and its reason."""
    daemon = DaemonProcess(root, '[daemon]\nlog_format = "fancy"\n', credentials={})
    try:
        with trio.fail_after(PROCESS_TIMEOUT), pytest.raises(DaemonStartError) as caught:
            await daemon.start()
        assert daemon.proc is not None
        code = daemon.proc.returncode
        assert code is not None and code > 0
        message = str(caught.value)
        assert f"exited {code} before READY=1" in message
        assert str(daemon.log_path) in message
        assert "log_format" in message
    finally:
        daemon.close()


async def test_restart_after_a_kill_reuses_the_paths(root: Path) -> None:
    """After SIGKILL the same object starts again on the same state, socket and log."""
    daemon = DaemonProcess(root, CONFIG, credentials=CREDENTIALS)
    try:
        with trio.fail_after(PROCESS_TIMEOUT):
            await daemon.start()
            first_pid = daemon.pid
            await daemon.kill()
            assert daemon.proc is not None and daemon.proc.returncode == -signal.SIGKILL
            await daemon.start(env_extra={"KILN_TEST_MARK": "second"})
            assert daemon.pid != first_pid
            assert len(daemon.events("daemon.started")) == 2  # one log across both runs
    finally:
        daemon.close()  # the sync teardown path: kills and reaps the running second process
    assert daemon.proc.poll() == -signal.SIGKILL
