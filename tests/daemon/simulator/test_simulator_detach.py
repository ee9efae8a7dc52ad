"""`python -m claykiln.daemon.simulator --kiln-config DIR --detach`: a simulator in the background
and a claykiln config (with its credentials) that works against it at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from claykiln.daemon.config import load_config
from claykiln.daemon.config.credentials import load_credential
from claykiln.daemon.simulator import DEFAULT_API_KEY

TIMEOUT = 60.0  # interpreter start-up on a busy 2-core machine, twice


async def simulator_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "claykiln.daemon.simulator", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_detach_returns_once_listening_with_a_config_for_claykiln(tmp_path: Path) -> None:
    """--detach exits 0 once the simulator listens, naming its pid; DIR/kiln.toml points the
    embedded default's clay upstream at it and DIR/credentials holds its API key."""
    directory = tmp_path / "kiln-sim"
    done = await simulator_cli("--port", "0", "--kiln-config", str(directory), "--detach")
    assert done.returncode == 0, done.stderr.decode()
    pid = int((directory / "simulator.pid").read_text())
    try:
        port = int((directory / "simulator.port").read_text())
        out = done.stdout.decode()
        assert f"claykiln simulator (pid {pid}) listening on http://127.0.0.1:{port}" in out
        assert f"stop it with: kill {pid}" in out
        config = load_config(directory / "kiln.toml", env={})
        assert config.upstreams["clay"].base_url == f"http://127.0.0.1:{port}"
        assert config.upstreams["clay"].rate is not None  # the rest is the embedded default
        assert config.daemon.socket == directory / "kiln.sock"
        assert config.daemon.credentials_dir == directory / "credentials"
        assert load_credential("clay-api-key", directory / "credentials") == DEFAULT_API_KEY
        assert load_credential("clay-webhook-token", directory / "credentials") is not None
        with trio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                me = await client.get("/public/v0/me", headers={"clay-api-key": DEFAULT_API_KEY})
                assert me.status_code == 200
    finally:
        os.kill(pid, signal.SIGTERM)


async def test_detach_reports_a_simulator_that_could_not_start(tmp_path: Path) -> None:
    """A child that exits at once (a bad setting) makes --detach exit 1 with its log."""
    directory = tmp_path / "kiln-sim"
    done = await simulator_cli("--webhook-rate", "0", "--kiln-config", str(directory), "--detach")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "error: the simulator did not start" in err
    assert "webhook_rate must be > 0" in err
    assert not (directory / "simulator.pid").exists()
