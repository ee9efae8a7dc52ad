"""Turning a ``KilnConfig`` into the actors' own settings (actors never import daemon/)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from claykiln.actors.breaker_types import BreakerPolicy
from claykiln.actors.call import Operation
from claykiln.actors.gate import RatePolicy
from claykiln.actors.jobs_policy import JobPolicy, OutboxSettings
from claykiln.actors.keyed_call import CallGuard
from claykiln.actors.lanes import LanePolicy
from claykiln.actors.upstream import UpstreamSettings
from claykiln.daemon.config.credentials import CredentialStore
from claykiln.daemon.config.types import KilnConfig

__all__ = [
    "breaker_policies",
    "call_guards",
    "credential_names",
    "lane_policies",
    "operations",
    "outbox_settings",
    "outbox_settings_of",
    "rate_policies",
    "upstream_settings",
]


def credential_names(config: KilnConfig) -> set[str]:
    names = {u.auth.credential for u in config.upstreams.values() if u.auth}
    names |= {o.auth.credential for o in config.operations.values() if o.auth}
    return names


def upstream_settings(config: KilnConfig, creds: CredentialStore) -> dict[str, UpstreamSettings]:
    """Pool settings per upstream. Auth is injected per operation (see ``operations``)."""
    return {
        name: UpstreamSettings(
            name=name,
            base_url=up.base_url,
            timeouts=up.timeouts,
            max_connections=up.max_connections,
            default_headers=up.headers,
            http_client=up.http_client,
        )
        for name, up in config.upstreams.items()
    }


def operations(config: KilnConfig, creds: CredentialStore) -> dict[str, Operation]:
    out: dict[str, Operation] = {}
    for name, op in config.operations.items():
        auth = op.auth or config.upstreams[op.upstream].auth
        out[name] = Operation(
            name=name,
            upstream=op.upstream,
            method=op.method,
            path=op.path,
            lane=op.lane,
            timeout=op.timeout,
            timeout_class=op.timeout_class,
            repeat_safe=op.repeat_safe,
            idempotent=op.idempotent,
            cacheable=op.cacheable,
            on_failure=op.on_failure,
            breaker_scope=op.breaker,
            headers=dict(op.headers),
            auth_header=auth.header if auth else None,
            credential=creds.get(auth.credential) if auth else None,
            gate=op.gate,
        )
    return out


def call_guards(config: KilnConfig) -> dict[str, CallGuard]:
    """Per operation: its idempotency mode, retention, key field, cache and fallback."""
    return {
        name: CallGuard(
            idempotency=op.idempotency,
            retention=op.idempotency_retention,
            key_field=op.key_field,
            cache=op.cache,
            fallback=op.on_failure == "fallback",
        )
        for name, op in config.operations.items()
    }


def breaker_policies(config: KilnConfig) -> dict[str, BreakerPolicy]:
    """Per breaker key: the upstream's policy (also for per-operation breakers), each named
    breaker's own, and on the breaker of an upstream's probe operation that operation."""
    out = {name: up.breaker for name, up in config.upstreams.items()}
    for name, op in config.operations.items():
        if op.breaker == "operation":
            out[f"{op.upstream}/{name}"] = config.upstreams[op.upstream].breaker
    out.update(config.breakers)
    for up in config.upstreams.values():
        if up.probe is not None and up.probe.operation in config.operations:
            key = config.breaker_key(config.operations[up.probe.operation])
            out[key] = attrs.evolve(out[key], probe_operation=up.probe.operation)
    return out


def rate_policies(config: KilnConfig) -> dict[str, RatePolicy]:
    """Per gate key, the pacing of every gate that paces: each upstream's ``rate`` under the
    upstream's name, each ``[gates]`` entry with a rate under its own. A gate left out (no
    pacing) still honours Retry-After closures: GateBoard treats an unknown key as unpaced."""
    out = {name: up.rate for name, up in config.upstreams.items() if up.rate is not None}
    out.update({name: rate for name, rate in config.gates.items() if rate is not None})
    return out


def lane_policies(config: KilnConfig) -> Mapping[str, LanePolicy]:
    return dict(config.lanes)


def outbox_settings(config: KilnConfig) -> OutboxSettings:
    """``[daemon.outbox]`` and, per operation, how its submitted jobs are keyed, checked,
    retried and laned (``outbox``, ``webhook``, ``idempotency = "derive"``, ``key_field``)."""
    box = config.daemon.outbox
    return OutboxSettings(
        concurrency=box.concurrency,
        done_retention=box.done_retention,
        dlq_degraded=box.dlq_degraded,
        retry_rate=box.retry_rate,
        policies={
            name: JobPolicy(
                max_attempts=op.outbox.max_attempts,
                base=op.outbox.backoff_base,
                cap=op.outbox.backoff_cap,
                lane=op.outbox.lane,
                derive_key=op.idempotency == "derive",
                key_field=op.key_field,
                webhook=op.webhook,
            )
            for name, op in config.operations.items()
        },
    )


def outbox_settings_of(config: Callable[[], KilnConfig]) -> Callable[[], OutboxSettings]:
    """A function answering ``outbox_settings`` of the config ``config()`` returns now (the
    running one: a reload applies at the next job), computed once per config."""
    memo: list[tuple[KilnConfig, OutboxSettings]] = []

    def current() -> OutboxSettings:
        running = config()
        if not memo or memo[0][0] is not running:
            memo[:] = [(running, outbox_settings(running))]
        return memo[0][1]

    return current
