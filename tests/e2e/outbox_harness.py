"""The outbox's end-to-end setup: operations for row pushes with fast backoff, and waiting on
the daemon's own counts (``status`` -> ``outbox``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import TrioClient

Factory = Callable[..., KilnProcess]

AUTH = 'auth = { header = "x-clay-webhook-auth", credential = "clay-webhook-token" }'
PUSH = """
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{{webhook_id}}"
lane = "bulk"
breaker = "clay-webhook"
{auth}
outbox = {{ max_attempts = {attempts}, backoff_base = "{base}", backoff_cap = "{cap}" }}
"""


def outbox_ops(
    *,
    attempts: int = 3,
    base: str = "50ms",
    cap: str = "200ms",
    lifetime_rows: int = 50_000,
    concurrency: int = 4,
    extra: str = "",
) -> str:
    """push_row (derived keys, Clay's webhook rules), push_keyed (key_field: safe to repeat),
    push_raw (no webhook rules: any body), a separate breaker for the webhooks, bulk lane."""
    push = PUSH.format(auth=AUTH, attempts=attempts, base=base, cap=cap)
    webhook = f'webhook = {{ max_row = "100KB", lifetime_rows = {lifetime_rows} }}\n'
    return (
        f"\n[daemon.outbox]\nconcurrency = {concurrency}\n"
        "\n[breakers.clay-webhook]\n"
        f'\n[operations.push_row]{push}idempotency = "derive"\n{webhook}'
        f'\n[operations.push_keyed]{push}idempotency = "derive"\nkey_field = "kiln_key"\n'
        f"{webhook}"
        f"\n[operations.push_raw]{push}"
        '\n[operations.me]\nupstream = "clay"\nmethod = "GET"\npath = "/public/v0/me"\n'
        'lane = "critical"\n'
        '\n[lanes.bulk]\nconcurrency = 8\nqueue = 1000\nmax_wait = "30s"\n'
        '[lanes.critical]\nconcurrency = 8\nqueue = 100\nmax_wait = "5s"\n'
        "[lanes.normal]\nconcurrency = 4\n" + extra
    )


def outbox_config(
    base_url: str, *, extra: str = "", ops: dict[str, Any] | None = None, **kw: Any
) -> str:
    """A daemon config for the simulator at ``base_url`` with ``outbox_ops(**ops)``."""
    return clay_config(base_url, extra=outbox_ops(**(ops or {})) + extra, **kw)


def push(webhook: str, row: Any, **kw: Any) -> dict[str, Any]:
    """submit's arguments for a row pushed to ``webhook``."""
    return {"path_params": {"webhook_id": webhook}, "json": row, **kw}


async def outbox_status(client: TrioClient) -> dict[str, Any]:
    status = await client.status()
    section: dict[str, Any] = status["outbox"]
    return section


async def wait_for(
    client: TrioClient, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """Poll ``status`` every 20 ms until ``predicate(outbox section)`` holds (bounded)."""
    with trio.fail_after(timeout):
        while True:
            section = await outbox_status(client)
            if predicate(section):
                return section
            await trio.sleep(0.02)
