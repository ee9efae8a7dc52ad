"""The durable outbox's keys (docs/configuration.md): ``[daemon.outbox]`` and an operation's
``outbox`` and ``webhook``. Part of :func:`claykiln.daemon.config.build.build_config`.

    [daemon.outbox]
    concurrency = 4            jobs in flight at once (each holds a lane slot while it runs)
    done_retention = "24h"     how long a done job (and its idempotency key) is kept
    dlq_degraded = 100         health is degraded while more jobs than this are dead
    retry_rate = 10            jobs per second an operator's retry releases (dlq.retry)

    [operations.NAME]
    outbox = { max_attempts = 5, backoff_base = "2s", backoff_cap = "10m", lane = "bulk" }
    webhook = { max_row = "100KB", lifetime_rows = 50000 }    Clay's table webhook rules

Every key may be left out. A job's lane defaults to ``bulk`` when that lane exists, else to the
operation's own lane. Problems are reported to the table, each naming the key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from claykiln.actors.jobs_policy import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_MAX_ATTEMPTS,
    WebhookRules,
)
from claykiln.daemon.config.schema import Table, duration, integer, number, size, string
from claykiln.daemon.config.units import format_duration

__all__ = ["DEFAULT_JOB_LANE", "OutboxConfig", "OutboxKeys", "read_daemon_outbox", "read_outbox"]

DEFAULT_JOB_LANE: Final = "bulk"
MAX_ATTEMPTS_LIMIT: Final = 100


@attrs.frozen
class OutboxConfig:
    """``[daemon.outbox]``: see the module docstring (durations in seconds)."""

    concurrency: int = 4
    done_retention: float = 86_400.0
    dlq_degraded: int = 100
    retry_rate: float = 10.0


@attrs.frozen
class OutboxKeys:
    """An operation's ``outbox`` table: attempts, backoff (seconds) and the jobs' lane."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    lane: str = DEFAULT_JOB_LANE


def read_daemon_outbox(t: Table) -> OutboxConfig:
    """``[daemon.outbox]``; invalid keys are reported and take their defaults."""
    d = OutboxConfig()
    config = OutboxConfig(
        concurrency=t.get("concurrency", integer(1, 1024, example=4), d.concurrency),
        done_retention=t.get("done_retention", duration(example="24h"), d.done_retention),
        dlq_degraded=t.get("dlq_degraded", integer(0, example=100), d.dlq_degraded),
        retry_rate=t.get("retry_rate", number(0, example=10), d.retry_rate),
    )
    t.finish()
    return config


def read_outbox(
    t: Table, own_lane: str, lanes: Mapping[str, object]
) -> tuple[OutboxKeys, WebhookRules | None]:
    """An operation's ``outbox`` and ``webhook`` keys (defaults for absent or invalid ones;
    problems are reported and mark the key invalid in ``t``)."""
    keys = OutboxKeys(lane=DEFAULT_JOB_LANE if DEFAULT_JOB_LANE in lanes else own_lane)
    outbox_t = t.table("outbox")
    if outbox_t is not None:
        keys = _outbox_keys(outbox_t, keys, lanes)
        if outbox_t.invalid:
            t.invalid.add("outbox")
    webhook_t = t.table("webhook")
    webhook = None
    if webhook_t is not None:
        d = WebhookRules()
        webhook = WebhookRules(
            max_row=webhook_t.get("max_row", size(1, example="100KB"), d.max_row),
            lifetime_rows=webhook_t.get(
                "lifetime_rows", integer(1, example=50000), d.lifetime_rows
            ),
        )
        webhook_t.finish()
        if webhook_t.invalid:
            t.invalid.add("webhook")
    return keys, webhook


def _outbox_keys(t: Table, base: OutboxKeys, lanes: Mapping[str, object]) -> OutboxKeys:
    attempts = t.get("max_attempts", integer(1, MAX_ATTEMPTS_LIMIT, example=5), base.max_attempts)
    backoff_base = t.get("backoff_base", duration(example="2s"), base.backoff_base)
    backoff_cap = t.get("backoff_cap", duration(example="10m"), base.backoff_cap)
    lane = t.get("lane", string(example="bulk"), base.lane)
    t.finish()
    if "lane" in t.data and "lane" not in t.invalid and lane not in lanes:
        known = ", ".join(sorted(lanes)) or "none"
        t.problems.bad_value(t.sub_path("lane"), lane, f"unknown lane; defined: {known}")
        t.invalid.add("lane")
    if backoff_cap < backoff_base and not {"backoff_base", "backoff_cap"} & t.invalid:
        why = f"must be at least backoff_base ({format_duration(backoff_base)})"
        t.problems.bad_value(t.sub_path("backoff_cap"), t.data.get("backoff_cap"), why)
        t.invalid.add("backoff_cap")
    return OutboxKeys(attempts, backoff_base, backoff_cap, lane)
