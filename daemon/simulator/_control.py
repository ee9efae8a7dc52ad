"""The control plane under ``/_sim/``: faults, stats, reset, settings, webhooks and rows.

Control requests are never subject to faults, so a separate process (``kiln demo``, an e2e
test) can always steer the simulator. Endpoints (JSON in, JSON out; bad input -> 400
``{"message": ...}``):

    GET  /_sim/stats                        counters, per-webhook row counts, the fault plan
    GET  /_sim/faults                       the fault plan
    POST /_sim/faults        {Faults}       replace the whole plan ({} clears it)
    POST /_sim/reset                        forget rows, counts, runs, faults
    GET  /_sim/settings                     the settings
    POST /_sim/settings      {partial}      change some settings (buckets restart full)
    POST /_sim/webhooks/{id} {token?, cap?} create or reconfigure a webhook
    GET  /_sim/webhooks/{id}/rows?after=N&limit=M   kept rows with seq > N, oldest first
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from claykiln.daemon.simulator._model import Faults, SimulatorConfigError, WebhookConfig
from claykiln.daemon.simulator._reply import CONTROL_PREFIX, Reply, json_reply
from claykiln.daemon.simulator._simulator import Simulator

__all__ = ["handle_control"]

DEFAULT_ROWS_LIMIT = 1_000


def _parse(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        msg = "control request body must be a JSON object"
        raise SimulatorConfigError(msg)


def _int_arg(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        return int(values[0])
    except ValueError:
        msg = f"query argument {name} must be an integer, got {values[0]!r}"
        raise SimulatorConfigError(msg)


def handle_control(sim: Simulator, method: str, path: str, query: bytes, body: bytes) -> Reply:
    """Answer one control request (see the module doc); never raises."""
    try:
        return _route(sim, method, path[len(CONTROL_PREFIX) :].strip("/").split("/"), query, body)
    except SimulatorConfigError as exc:
        return json_reply(400, {"message": str(exc)})


def _route(sim: Simulator, method: str, parts: list[str], query: bytes, body: bytes) -> Reply:
    match (method, parts):
        case ("GET", ["stats"]):
            return json_reply(200, sim.snapshot())
        case ("GET", ["faults"]):
            return json_reply(200, sim.faults.to_json())
        case ("POST", ["faults"]):
            sim.set_faults(Faults.from_json(_parse(body)))
            return json_reply(200, sim.faults.to_json())
        case ("POST", ["reset"]):
            sim.reset()
            return json_reply(200, {"status": "ok"})
        case ("GET", ["settings"]):
            return json_reply(200, sim.settings.to_json())
        case ("POST", ["settings"]):
            sim.update_settings(sim.settings.evolve_from_json(_parse(body)))
            return json_reply(200, sim.settings.to_json())
        case ("POST", ["webhooks", webhook_id]):
            config = WebhookConfig.from_json(_parse(body))
            sim.configure_webhook(webhook_id, token=config.token, cap=config.cap)
            return json_reply(200, {"webhook_id": webhook_id, "stored": sim.row_count(webhook_id)})
        case ("GET", ["webhooks", webhook_id, "rows"]):
            args = parse_qs(query.decode("latin-1"))
            after = _int_arg(args, "after", 0)
            limit = _int_arg(args, "limit", DEFAULT_ROWS_LIMIT)
            rows = [row.to_json() for row in sim.rows(webhook_id) if row.seq > after][:limit]
            payload = {"webhook_id": webhook_id, "stored": sim.row_count(webhook_id), "rows": rows}
            return json_reply(200, payload)
        case (_, ["stats" | "faults" | "reset" | "settings"]):
            return json_reply(405, {"message": f"{method} not allowed here"})
    return json_reply(404, {"message": f"no control endpoint {method} /_sim/{'/'.join(parts)}"})
