"""The demo's Clay: the simulator as its own process, steered over its ``/_sim/`` endpoints.

A separate process keeps the simulator's clock honest: its bucket and its rows' ``received_at``
are stamped when a request really arrives, whatever the demo's own process (rendering, polling)
is busy with. ``DemoSimulator`` starts ``python -m claykiln.daemon.simulator --port 0
--port-file F`` on 127.0.0.1, waits for the port file, and talks to the control plane with the
standard library's ``urllib`` in a worker thread (only actors/upstream*.py import httpx).

Stopping: ``stop`` sends SIGTERM, waits up to ``STOP_TIMEOUT`` s, then kills; always reaped.
A control request that fails raises ``DemoError``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from claykiln.daemon.demo.model import DemoError, SimCounters

__all__ = ["CONTROL_TIMEOUT", "DemoSimulator"]

READY_TIMEOUT: Final = 20.0
READY_POLL: Final = 0.02
STOP_TIMEOUT: Final = 3.0
CONTROL_TIMEOUT: Final = 5.0
HOST: Final = "127.0.0.1"


def _request(url: str, method: str, payload: dict[str, Any] | None) -> Any:
    """One blocking control request (run in a worker thread); the decoded JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT) as response:
        return json.loads(response.read())


class DemoSimulator:
    """One simulator process under ``root``; ``url`` is set once it listens."""

    def __init__(self, root: Path, *, api_key: str, rate: float, burst: int) -> None:
        self.root = root
        self.port_file = root / "sim.port"
        self.log_path = root / "simulator.log"
        self.api_key = api_key
        self.rate = rate
        self.burst = burst
        self.url = ""
        self.proc: trio.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command(self, webhooks: dict[str, str]) -> list[str]:
        cmd = [sys.executable, "-m", "claykiln.daemon.simulator", "--host", HOST, "--port", "0"]
        cmd += ["--port-file", str(self.port_file), "--api-key", self.api_key]
        cmd += ["--webhook-rate", f"{self.rate:g}", "--webhook-burst", str(self.burst)]
        for webhook_id, token in webhooks.items():
            cmd += ["--webhook", f"{webhook_id}:{token}"]
        return cmd

    async def start(self, webhooks: dict[str, str]) -> None:
        """Start it with ``webhooks`` (id -> token) configured; return once it listens.

        Raises ``DemoError`` if it exits first or does not listen within ``READY_TIMEOUT``.
        """
        try:
            with self.log_path.open("ab") as log:
                self.proc = await trio.lowlevel.open_process(
                    self.command(webhooks), stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            with trio.move_on_after(READY_TIMEOUT):
                while not self.port_file.exists():
                    if self.proc.poll() is not None:
                        status = self.proc.returncode
                        msg = f"the simulator exited with status {status}: {self._tail()}"
                        raise DemoError(msg)
                    await trio.sleep(READY_POLL)
                self.url = f"http://{HOST}:{int(self.port_file.read_text())}"
                return
            msg = f"the simulator did not listen within {READY_TIMEOUT:g} s: {self._tail()}"
            raise DemoError(msg)
        except BaseException:
            await self.stop()
            raise

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:] or "(no output)"
        except FileNotFoundError:
            return "(no output)"

    async def stop(self) -> None:
        """SIGTERM, wait, then kill; shielded from cancellation, always reaped."""
        proc = self.proc
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_TIMEOUT):
                    await proc.wait()
            if proc.poll() is None:
                proc.kill()
                with trio.move_on_after(STOP_TIMEOUT):
                    await proc.wait()

    # -- the control plane ------------------------------------------------------------------

    async def control(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """``method /_sim/path`` with an optional JSON body; the JSON answer."""
        url = f"{self.url}/_sim/{path}"
        try:
            return await trio.to_thread.run_sync(partial(_request, url, method, payload))
        except (OSError, ValueError, urllib.error.URLError) as exc:
            msg = f"the simulator did not answer {method} /_sim/{path}: {exc}"
            raise DemoError(msg) from exc

    async def stats(self) -> dict[str, Any]:
        """Counters, per-webhook row counts and the fault plan (``GET /_sim/stats``)."""
        stats: dict[str, Any] = await self.control("GET", "stats")
        return stats

    async def counters(self) -> SimCounters:
        """The request counters now (control requests excluded)."""
        return SimCounters.from_stats(await self.stats())

    async def set_faults(self, **faults: Any) -> None:
        """Replace the fault plan (``Faults`` fields; none clears it)."""
        await self.control("POST", "faults", faults)

    async def clear_faults(self) -> None:
        await self.control("POST", "faults", {})

    async def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = await self.control("GET", "settings")
        return settings

    async def update_settings(self, **changes: Any) -> None:
        """Change some settings; both token buckets restart full."""
        await self.control("POST", "settings", changes)

    async def row_count(self, webhook_id: str) -> int:
        """Rows the webhook ever stored (exact)."""
        webhooks = (await self.stats()).get("webhooks", {})
        return int(webhooks.get(webhook_id, {}).get("stored", 0))

    async def arrivals(self, webhook_id: str, after: int) -> list[float]:
        """``received_at`` (the simulator's clock, seconds) of the rows with seq > ``after``."""
        answer = await self.control("GET", f"webhooks/{webhook_id}/rows?after={after}")
        return [float(row["received_at"]) for row in answer.get("rows", [])]
