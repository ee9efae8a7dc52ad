"""Real daemon processes for end-to-end tests: config on disk, credentials, READY via NOTIFY_SOCKET.

``KilnProcess`` starts ``python -m claykiln.daemon serve`` with a temp socket and state dir,
waits for ``READY=1`` on a real datagram socket (the way systemd would), and stops it with a
real signal. Its JSON log lines are kept in a file the test can read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

API_KEY = "sim-api-key-0123456789"  # the simulator's default valid key is set per test
WEBHOOK_TOKEN = "hook-token-s3cr3t-98765"

UPSTREAM = """
[upstreams.clay]
base_url = "{base_url}"
auth = {{ header = "clay-api-key", credential = "clay-api-key" }}
rate = {{ per_second = {rate}, burst = {burst} }}
breaker = {{ error_threshold = 0.5, volume_threshold = {volume}, window = "10s", reset_timeout = "{reset}", half_open_probes = {probes} }}
retry = {{ attempts = {attempts}, base = "{retry_base}", cap = "{retry_cap}" }}
timeouts = {{ connect = "2s", request = "{request_timeout}", upload = "10s", long_poll = "10s" }}
max_connections = 64
"""


def clay_config(base_url: str, *, extra: str = "", **kw: Any) -> str:
    """A config file pointing the default Clay operations at ``base_url`` (the simulator)."""
    values: dict[str, Any] = {
        "rate": 1000,
        "burst": 1000,
        "volume": 10,
        "reset": "30s",
        "probes": 1,
        "attempts": 1,
        "retry_base": "50ms",
        "retry_cap": "200ms",
        "request_timeout": "5s",
    }
    values.update(kw)
    daemon = '[daemon]\nlog_format = "json"\nlog_level = "info"\ngrace_period = "5s"\n'
    return daemon + UPSTREAM.format(base_url=base_url, **values) + extra


class KilnProcess:
    """One daemon process on temp paths under ``root``."""

    def __init__(self, root: Path, config_text: str, *, api_key: str = API_KEY) -> None:
        self.root = root
        self.socket = root / "kiln.sock"
        self.state_dir = root / "state"
        self.config_path = root / "kiln.toml"
        self.creds = root / "creds"
        self.log_path = root / "kiln.log"
        self.creds.mkdir(parents=True, exist_ok=True)
        (self.creds / "clay-api-key").write_text(api_key + "\n")
        (self.creds / "clay-webhook-token").write_text(WEBHOOK_TOKEN + "\n")
        self.write_config(config_text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify_path = root / "notify.sock"
        self._notify: socket.socket | None = None

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)

    async def start(self, timeout: float = 20.0, env_extra: dict[str, str] | None = None) -> None:
        if self._notify is None:
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify.bind(str(self.notify_path))
            self._notify.setblocking(False)
        env = dict(os.environ)
        env.pop("KILN_SOCKET", None)
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        env["CREDENTIALS_DIRECTORY"] = str(self.creds)
        env.update(env_extra or {})
        log = self.log_path.open("ab")
        cmd = [
            sys.executable,
            "-m",
            "claykiln.daemon",
            "serve",
            "--config",
            str(self.config_path),
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state_dir),
        ]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        log.close()
        deadline = trio.current_time() + timeout
        assert self._notify is not None
        while True:
            if self.proc.poll() is not None:
                msg = f"daemon exited {self.proc.returncode} before READY; log:\n{self.log_text()}"
                raise AssertionError(msg)
            if trio.current_time() > deadline:
                self.kill()
                msg = f"daemon not READY within {timeout}s; log:\n{self.log_text()}"
                raise AssertionError(msg)
            with trio.move_on_after(0.05):
                await trio.lowlevel.wait_readable(self._notify)
                if b"READY=1" in self._notify.recv(4096):
                    return

    def notifications(self) -> list[str]:
        """Every sd_notify datagram received so far that was not consumed by ``start``."""
        out = []
        assert self._notify is not None
        while True:
            try:
                out.append(self._notify.recv(4096).decode())
            except BlockingIOError:
                return out

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        proc = self.proc
        with trio.fail_after(timeout):
            while proc.poll() is None:
                await trio.sleep(0.02)
        return proc.returncode

    async def stop(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if name is None or item.get("event") == name:
                out.append(item)
        return out

    def close(self) -> None:
        self.kill()
        if os.environ.get("KILN_E2E_DUMP"):
            print(self.log_text())
        if self._notify is not None:
            self._notify.close()
            self._notify = None
