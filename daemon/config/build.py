"""From parsed TOML to a :class:`KilnConfig`: every section, every cross-check, all problems.

The file is first laid over the embedded default (``overlay.py``: a file extends the default,
table by table; ``[embedded_default] replace`` takes tables from the file alone), then every
section of the result is read. A problem in a table the file never touched names where it came
from (``Overlay.note``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from claykiln.actors.breaker import BreakerPolicy
from claykiln.actors.gate import RatePolicy
from claykiln.actors.lanes import LanePolicy
from claykiln.actors.retry import RetryPolicy
from claykiln.actors.upstream import HTTP_CLIENTS, TimeoutClasses
from claykiln.daemon.config import breakers as breaker_keys
from claykiln.daemon.config.credential_check import check_credential_files
from claykiln.daemon.config.daemon_table import build_daemon
from claykiln.daemon.config.fields import auth_table, header_table
from claykiln.daemon.config.operations import METHODS, operation
from claykiln.daemon.config.overlay import Overlay, overlay
from claykiln.daemon.config.schema import (
    ConfigError,
    Invalid,
    Parser,
    Problems,
    Table,
    boolean,
    build_policy,
    check_base_url,
    choice,
    duration,
    integer,
    number,
)
from claykiln.daemon.config.types import (
    KilnConfig,
    OperationConfig,
    UpstreamConfig,
)
from claykiln.daemon.config.units import format_duration

__all__ = ["METHODS", "build_config"]


BREAKER_RULES: Mapping[str, Parser[Any]] = {
    "error_threshold": number(0, 1, example=0.5),
    "volume_threshold": integer(1, example=10),
    "window": duration(example="10s"),
    "buckets": integer(1, example=10),
    "slow_call_duration": duration(example="5s"),
    "slow_call_threshold": number(0, 1, example=0.8),
    "reset_timeout": duration(example="30s"),
    "half_open_probes": integer(1, example=1),
    "probe_timeout": duration(example="60s"),
    "consecutive_failures": integer(0, example=5),
    "consecutive_connect_failures": integer(0, example=3),
    "reset_backoff": number(1, low_open=False, example=2),
    "max_reset_timeout": duration(example="60s"),
    "reset_jitter": number(0, 0.99, low_open=False, example=0.1),
    "healthy_period": duration(example="60s", allow_zero=True),
}
RATE_RULES: Mapping[str, Parser[Any]] = {
    "per_second": number(0, example=10),
    "burst": integer(1, example=20),
    "max_retry_after": duration(example="10m"),
    "margin": duration(example="150ms", allow_zero=True),
}
RETRY_RULES: Mapping[str, Parser[Any]] = {
    "attempts": integer(1, example=3),
    "base": duration(example="250ms"),
    "cap": duration(example="10s"),
}
LANE_RULES: Mapping[str, Parser[Any]] = {
    "concurrency": integer(1, example=10),
    "queue": integer(0, example=100),
    "max_wait": duration(example="5s"),
}
# Every TimeoutClasses field is a duration, including ones added later.
TIMEOUT_RULES: Mapping[str, Parser[Any]] = {
    f.name: duration(example="30s") for f in attrs.fields(TimeoutClasses)
}


def build_config(
    data: Mapping[str, Any],
    *,
    source: str,
    base_dir: Path,
    embedded: Mapping[str, Any],
    socket: Path | None,
    state_dir: Path | None,
    env: Mapping[str, str],
    warnings: list[str] | None = None,
) -> KilnConfig:
    """Validate ``data`` (parsed TOML) over ``embedded`` (``overlay.py``); raises
    :class:`ConfigError` listing every problem found, in one pass.

    With a ``warnings`` list, the credential files are checked too (``credential_check.py``):
    files the daemon could not use are problems, missing ones are added to ``warnings``.
    """
    problems = Problems()
    layers = overlay(embedded, data, problems)
    root = Table(layers.data, "", problems)
    daemon_table = root.table("daemon") or Table({}, "daemon", problems)
    daemon = build_daemon(daemon_table, base_dir, socket, state_dir, env)
    lanes = _lanes(root.table("lanes") or Table({}, "lanes", problems))

    up_table = root.table("upstreams") or Table({}, "upstreams", problems)
    upstreams: dict[str, UpstreamConfig | None] = {
        name: _upstream(name, t) for name, t in up_table.named_tables()
    }
    up_table.finish()

    gates_table = root.table("gates") or Table({}, "gates", problems)
    gates, declared_gates = _gates(gates_table, upstreams, layers)
    gate_names = dict.fromkeys([*upstreams, *declared_gates])

    breakers_table = root.table("breakers") or Table({}, "breakers", problems)
    declared_breakers = breaker_keys.declared_breakers(
        breakers_table, upstreams, lambda name: layers.note("breakers", name)
    )

    ops_table = root.table("operations") or Table({}, "operations", problems)
    operations: dict[str, OperationConfig] = {}
    declared_ops: set[str] = set()
    for name, t in ops_table.named_tables():
        declared_ops.add(name)
        note = layers.note("operations", name)
        op = operation(name, t, upstreams, lanes, gate_names, note)
        if op is not None:
            operations[name] = op
    ops_table.finish()
    valid_upstreams = {k: v for k, v in upstreams.items() if v is not None}
    breaker_keys.check_breaker_names(
        operations, declared_breakers, problems, lambda name: layers.note("operations", name)
    )
    breakers = breaker_keys.named_breakers(
        declared_breakers, valid_upstreams, operations, BREAKER_RULES
    )
    valid_upstreams = breaker_keys.resolve_probes(
        valid_upstreams,
        operations,
        problems,
        inherited={n for n in upstreams if layers.inherited("upstreams", n, "probe")},
        declared=frozenset(declared_ops),
    )
    root.finish()
    if warnings is not None:
        check_credential_files(
            _credential_users(valid_upstreams, operations),
            daemon.credentials_dir,
            problems,
            warnings,
            env,
        )

    if problems.lines:
        raise ConfigError.from_problems(source, problems.lines)
    return KilnConfig(
        daemon=daemon,
        upstreams=valid_upstreams,
        lanes={k: v for k, v in lanes.items() if v is not None},
        operations=operations,
        source=source,
        gates=gates,
        breakers=breakers,
    )


def _credential_users(
    upstreams: Mapping[str, UpstreamConfig], operations: Mapping[str, OperationConfig]
) -> dict[str, list[str]]:
    """Each credential name and the config keys that name it."""
    users: dict[str, list[str]] = {}
    for up in upstreams.values():
        if up.auth is not None:
            users.setdefault(up.auth.credential, []).append(f"upstreams.{up.name}.auth")
    for op in operations.values():
        if op.auth is not None:
            users.setdefault(op.auth.credential, []).append(f"operations.{op.name}.auth")
    return users


# ---- [upstreams.NAME], [lanes.NAME] ------------------------------------------------------


def _base_url(raw: object) -> str:
    problem, normalized = check_base_url(raw) if isinstance(raw, str) else ("", "")
    if problem is not None:
        msg = problem or 'must be an http(s) URL string, e.g. "https://api.clay.com"'
        raise Invalid(msg)
    return normalized


def _upstream(name: str, t: Table) -> UpstreamConfig | None:
    base_url = t.require("base_url", _base_url, '"https://api.example.com"')
    auth = auth_table(t.table("auth"))
    rate_t = t.table("rate")
    rate = build_policy(RatePolicy, rate_t, RATE_RULES) if rate_t is not None else None
    breaker = build_policy(BreakerPolicy, t.table("breaker"), BREAKER_RULES)
    retry_t = t.table("retry")
    retry = build_policy(RetryPolicy, retry_t, RETRY_RULES)
    if not _in_order(retry_t, "base", "cap", RETRY_RULES, RetryPolicy()):
        retry = None
    timeouts = build_policy(TimeoutClasses, t.table("timeouts"), TIMEOUT_RULES)
    max_connections = t.get("max_connections", integer(1, example=64), 64)
    headers: dict[str, str] = t.get("headers", header_table, {})
    http_client = t.get("http_client", choice(*HTTP_CLIENTS, fold_case=False), "h11")
    probe = breaker_keys.probe(t.table("probe"))
    critical = t.get("critical", boolean, False)
    t.finish()
    if base_url is None or breaker is None or retry is None or timeouts is None or t.invalid:
        return None
    if rate_t is not None and rate is None:
        return None
    return UpstreamConfig(
        name=name,
        base_url=base_url,
        auth=auth,
        rate=rate,
        breaker=breaker,
        retry=retry,
        timeouts=timeouts,
        max_connections=max_connections,
        headers=headers,
        http_client=http_client,
        probe=probe,
        critical=critical,
    )


def _in_order(
    t: Table | None, low: str, high: str, rules: Mapping[str, Parser[Any]], defaults: object
) -> bool:
    """False (and reported) when ``t``'s ``high`` is below its ``low``, each as written or else
    as in ``defaults``; checked even when other keys of ``t`` are invalid (one pass), but not
    when either of the two is (that problem is reported already)."""
    if t is None or (low not in t.data and high not in t.data):
        return True
    values = []
    for key in (low, high):
        if key not in t.data:
            values.append(getattr(defaults, key))
            continue
        try:
            values.append(rules[key](t.data[key]))
        except Invalid:
            return True
    if values[1] >= values[0]:
        return True
    raw = t.data.get(high, format_duration(values[1]))
    why = f"must be at least {t.path.rsplit('.', 1)[-1]}.{low} ({format_duration(values[0])})"
    t.problems.bad_value(t.sub_path(high), raw, why)
    return False


def _lanes(t: Table) -> dict[str, LanePolicy | None]:
    """Every declared lane; None for one whose problems were reported."""
    lanes: dict[str, LanePolicy | None] = {
        name: build_policy(LanePolicy, lane_t, LANE_RULES) for name, lane_t in t.named_tables()
    }
    t.finish()
    return lanes


# ---- [gates.NAME] ------------------------------------------------------------------------


def _gates(
    t: Table, upstreams: Mapping[str, UpstreamConfig | None], layers: Overlay
) -> tuple[dict[str, RatePolicy | None], frozenset[str]]:
    """The valid gates (pacing, or None for an empty table: Retry-After closures only) and
    every declared name (operations may name a gate whose own problems were reported)."""
    gates: dict[str, RatePolicy | None] = {}
    declared: set[str] = set()
    for name, gate_t in t.named_tables():
        declared.add(name)
        clash = name in upstreams
        if clash:
            t.problems.add(
                f"{gate_t.path}: a gate may not be named like an upstream (upstream {name} "
                f"has its own gate, paced by upstreams.{name}.rate); rename the gate"
                f"{layers.note('gates', name)}"
            )
        policy = build_policy(RatePolicy, gate_t, RATE_RULES) if gate_t.data else None
        if not clash and not (gate_t.data and policy is None):
            gates[name] = policy
    t.finish()
    return gates, frozenset(declared)
