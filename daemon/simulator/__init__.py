"""A Clay simulator: a real HTTP server on 127.0.0.1 that behaves as Clay documents.

Used by ``kiln demo``, ``kiln bench`` and the tests. It serves Clay's table webhooks
(``POST /v3/sources/webhook/{id}``) with the documented token bucket, body limit, auth token
and lifetime cap, and the public API under ``/public/v0`` (``/me``, routine start and poll).
Faults (errors, latency, hangs, resets before or after a row is stored, bursts, outages) are
switchable at runtime from Python or over HTTP under ``/_sim/``; counters are exact.

In process::

    async with open_simulator(webhook_rate=10, webhook_burst=20) as running:
        running.sim.set_faults(Faults(error_rate=0.1, seed=7))
        ... httpx.post(running.webhook_url("w1"), json={...}) ...
        assert running.sim.row_count("w1") == 5

As a separate process: ``python -m claykiln.daemon.simulator --port 0 --port-file PATH``.
"""

from claykiln.daemon.simulator._model import (
    DEFAULT_API_KEY,
    DEFAULT_RECORD_CAP,
    Faults,
    OutageMode,
    ResetMode,
    Row,
    SimSettings,
    SimStats,
    SimulatorConfigError,
    TokenBucket,
    WebhookConfig,
)
from claykiln.daemon.simulator._reply import Reply
from claykiln.daemon.simulator._server import RunningSimulator, open_simulator, serve_simulator
from claykiln.daemon.simulator._simulator import Simulator

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_RECORD_CAP",
    "Faults",
    "OutageMode",
    "Reply",
    "ResetMode",
    "Row",
    "RunningSimulator",
    "SimSettings",
    "SimStats",
    "Simulator",
    "SimulatorConfigError",
    "TokenBucket",
    "WebhookConfig",
    "open_simulator",
    "serve_simulator",
]
