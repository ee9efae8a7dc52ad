"""Real daemon processes for end-to-end tests: config on disk, credentials, READY via NOTIFY_SOCKET.

``KilnProcess`` is a ``DaemonProcess`` (claykiln.daemon.launcher: temp socket and state
dir, READY=1 awaited on a real datagram socket the way systemd would, real signals, the JSON log
in a file) with the test credentials and the tests' defaults: a failed start is an
``AssertionError``, ``wait`` and ``stop`` are bounded by ``timeout`` seconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from claykiln.daemon.client import TrioClient
from claykiln.daemon.launcher import DaemonProcess, DaemonStartError

API_KEY = "sim-api-key-0123456789"  # the simulator's default valid key is set per test
WEBHOOK_TOKEN = "hook-token-s3cr3t-98765"

UPSTREAM = """
[upstreams.clay]
base_url = "{base_url}"
auth = {{ header = "clay-api-key", credential = "clay-api-key" }}
rate = {{ per_second = {rate}, burst = {burst} }}
breaker = {{ error_threshold = 0.5, volume_threshold = {volume}, window = "10s", reset_timeout = "{reset}", half_open_probes = {probes}, consecutive_failures = {consecutive}, consecutive_connect_failures = {consecutive_connect} }}
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
        # The window alone, as these tests count calls against it; the in-a-row signals are
        # tested in test_breaker_outage.py with the embedded default's breaker.
        "consecutive": 0,
        "consecutive_connect": 0,
        "attempts": 1,
        "retry_base": "50ms",
        "retry_cap": "200ms",
        "request_timeout": "5s",
    }
    values.update(kw)
    daemon = '[daemon]\nlog_format = "json"\nlog_level = "info"\ngrace_period = "5s"\n'
    return daemon + UPSTREAM.format(base_url=base_url, **values) + extra


async def wait_gate_closed(client: TrioClient, gate: str) -> None:
    """Until status shows ``gate`` closed. A 429 closes it by a notice the gate actor takes on
    its next pass, a moment after the call that met the 429 was answered: a next call or a stop
    right away could come first (bounded by the caller's fail_after)."""
    while not (await client.status())["gate"]["upstreams"][gate]["closed"]:
        await trio.sleep(0.01)


class KilnProcess(DaemonProcess):
    """One daemon process on temp paths under ``root``."""

    def __init__(self, root: Path, config_text: str, *, api_key: str = API_KEY) -> None:
        credentials = {"clay-api-key": api_key, "clay-webhook-token": WEBHOOK_TOKEN}
        super().__init__(root, config_text, credentials=credentials)

    @property
    def creds(self) -> Path:
        """The credentials directory (one file per credential)."""
        return self.creds_dir

    async def start(  # type: ignore[override]  # the tests' positional ``timeout``
        self, timeout: float = 20.0, env_extra: Mapping[str, str] | None = None
    ) -> None:
        """Start and wait for READY=1; AssertionError (with the log's tail) if it never comes."""
        try:
            await super().start(ready_within=timeout, env_extra=env_extra)
        except DaemonStartError as exc:
            raise AssertionError(str(exc)) from exc

    async def wait(self, timeout: float = 30.0) -> int:
        """The exit status; trio.TooSlowError if the process lives on past ``timeout`` s."""
        with trio.fail_after(timeout):
            return await super().wait()

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then the exit status (killed after ``timeout`` s)."""
        return await super().stop(grace=timeout)

    def close(self) -> None:
        """Kill and reap (sync, for fixture teardown); KILN_E2E_DUMP=1 prints the log."""
        super().close()
        if os.environ.get("KILN_E2E_DUMP"):
            print(self.log_text())
