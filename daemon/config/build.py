"""From parsed TOML to a :class:`KilnConfig`: every section, every cross-check, all problems.

The file is first laid over the embedded default (``overlay.py``: a file extends the default,
table by table; ``[embedded_default] replace`` takes tables from the file alone), then every
section of the result is read. A problem in a table the file never touched names where it came
from (``Overlay.note``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import attrs

from claykiln.actors.breaker import BreakerPolicy
from claykiln.actors.gate import RatePolicy
from claykiln.actors.lanes import LanePolicy
from claykiln.actors.retry import RetryPolicy
from claykiln.actors.upstream import HTTP_CLIENTS, TimeoutClasses
from claykiln.daemon.config import breakers as breaker_keys
from claykiln.daemon.config.call_guards import read_guards
from claykiln.daemon.config.credential_check import check_credential_files
from claykiln.daemon.config.credentials import credential_name_problem
from claykiln.daemon.config.daemon_table import build_daemon
from claykiln.daemon.config.outbox import read_outbox
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
    string,
)
from claykiln.daemon.config.types import (
    AuthConfig,
    KilnConfig,
    OnFailure,
    OperationConfig,
    UpstreamConfig,
)
from claykiln.daemon.config.units import format_duration

__all__ = ["METHODS", "build_config"]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
# RFC 9110 idempotent methods: repeating them is safe unless the config says otherwise.
REPEAT_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
CUSTOM_TIMEOUT = "custom"
_HEADER_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

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
TIMEOUT_CLASSES = tuple(f.name for f in attrs.fields(TimeoutClasses))


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
        op = _operation(name, t, upstreams, lanes, gate_names, note)
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


def _headers(raw: object) -> dict[str, str]:
    rule = 'must be a table of header names to strings, e.g. { "user-agent" = "claykiln/0.1" }'
    if not isinstance(raw, Mapping):
        raise Invalid(rule)
    for name, value in raw.items():
        if not re.fullmatch(_HEADER_NAME, name):
            msg = f"{json.dumps(name)} is not a valid header name; {rule}"
            raise Invalid(msg)
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            msg = f"the value of {json.dumps(name)} must be a string without line breaks"
            raise Invalid(msg)
    return dict(raw)


def _header_name(raw: object) -> str:
    if not isinstance(raw, str) or not re.fullmatch(_HEADER_NAME, raw):
        msg = 'must be an HTTP header name (letters, digits, "-", no spaces), e.g. "clay-api-key"'
        raise Invalid(msg)
    return raw


def _credential(raw: object) -> str:
    if not isinstance(raw, str):
        msg = 'must be a credential file name, e.g. "clay-api-key"'
        raise Invalid(msg)
    problem = credential_name_problem(raw)
    if problem is not None:
        msg = f'{problem} (a file name in credentials_dir, e.g. "clay-api-key")'
        raise Invalid(msg)
    return raw


def _auth(t: Table | None) -> AuthConfig | None:
    if t is None:
        return None
    header = t.require("header", _header_name, '"clay-api-key"')
    credential = t.require("credential", _credential, '"clay-api-key"')
    t.finish()
    if header is None or credential is None:
        return None
    return AuthConfig(header=header, credential=credential)


def _upstream(name: str, t: Table) -> UpstreamConfig | None:
    base_url = t.require("base_url", _base_url, '"https://api.example.com"')
    auth = _auth(t.table("auth"))
    rate_t = t.table("rate")
    rate = build_policy(RatePolicy, rate_t, RATE_RULES) if rate_t is not None else None
    breaker = build_policy(BreakerPolicy, t.table("breaker"), BREAKER_RULES)
    retry_t = t.table("retry")
    retry = build_policy(RetryPolicy, retry_t, RETRY_RULES)
    if not _in_order(retry_t, "base", "cap", RETRY_RULES, RetryPolicy()):
        retry = None
    timeouts = build_policy(TimeoutClasses, t.table("timeouts"), TIMEOUT_RULES)
    max_connections = t.get("max_connections", integer(1, example=64), 64)
    headers: dict[str, str] = t.get("headers", _headers, {})
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


# ---- [operations.NAME] -------------------------------------------------------------------


def _path_template(raw: object) -> str:
    if not isinstance(raw, str) or not raw.startswith("/") or any(c.isspace() for c in raw):
        msg = 'must be a path starting with "/" without spaces, e.g. "/v1/things/{thing_id}"'
        raise Invalid(msg)
    if "{" in _PLACEHOLDER.sub("", raw) or "}" in _PLACEHOLDER.sub("", raw):
        msg = "has an unbalanced { or }; placeholders look like {thing_id}"
        raise Invalid(msg)
    for name in _PLACEHOLDER.findall(raw):
        if not name.isidentifier():
            msg = (
                f"placeholder {{{name}}} must be an identifier (letters, digits and _, "
                "not starting with a digit), e.g. {thing_id}"
            )
            raise Invalid(msg)
    return raw


def _timeout(raw: object) -> tuple[str, float | None]:
    if isinstance(raw, str) and raw in TIMEOUT_CLASSES:
        return raw, None
    try:
        return CUSTOM_TIMEOUT, duration(example="45s")(raw)
    except Invalid:
        classes = ", ".join(TIMEOUT_CLASSES)
        msg = f'must be a timeout class ({classes}) or a duration > 0 like "45s"'
        raise Invalid(msg) from None


def _on_failure(raw: object) -> str:
    return choice("error", "fallback", "dlq", fold_case=False)(raw)


def _known(name: str, defined: Mapping[str, object]) -> str:
    """``; did you mean X? (defined: A, B)`` or ``; defined: A, B`` for an unknown name."""
    near = difflib.get_close_matches(name, list(defined), n=1, cutoff=0.6)
    known = ", ".join(sorted(defined)) or "none"
    return f"; did you mean {near[0]}? (defined: {known})" if near else f"; defined: {known}"


def _operation(
    name: str,
    t: Table,
    upstreams: Mapping[str, UpstreamConfig | None],
    lanes: Mapping[str, LanePolicy | None],
    gates: Mapping[str, object],
    note: str,
) -> OperationConfig | None:
    upstream = t.require("upstream", string(example="clay"), '"clay"')
    method = t.require("method", choice(*METHODS), '"POST"')
    path = t.require("path", _path_template, '"/v1/things/{thing_id}"')
    lane = t.get("lane", string(example="normal"), "normal")
    no_seconds: float | None = None
    timeout_class, seconds = t.get("timeout", _timeout, ("request", no_seconds))
    on_failure = t.get("on_failure", _on_failure, "error")
    repeat_safe = t.get("repeat_safe", boolean, method in REPEAT_SAFE_METHODS)
    guards = read_guards(t, method, on_failure)
    job_keys, webhook = read_outbox(t, lane, lanes)
    breaker = t.get("breaker", breaker_keys.breaker_scope, "upstream")
    gate = t.get("gate", string(example="clay-public"), None)
    headers: dict[str, str] = t.get("headers", _headers, {})
    auth_t = t.table("auth")
    auth = _auth(auth_t)
    t.finish()
    if upstream is not None and upstream not in upstreams:
        why = f"unknown upstream{_known(upstream, upstreams)}{note}"
        t.problems.bad_value(t.sub_path("upstream"), upstream, why)
    if "lane" not in t.invalid and lane not in lanes:
        known = ", ".join(sorted(lanes)) or "none"
        if "lane" in t.data:
            why = f"unknown lane{_known(lane, lanes)}{note}"
            t.problems.bad_value(t.sub_path("lane"), lane, why)
        else:
            t.problems.add(
                f"{t.sub_path('lane')}: not set, and the default lane {json.dumps(lane)} is not "
                f"defined; set lane to one of: {known}{note}"
            )
        t.invalid.add("lane")
    # A gate named like the operation's own (unknown) upstream was just reported as such.
    if gate is not None and gate not in gates and gate != upstream:
        t.problems.bad_value(t.sub_path("gate"), gate, f"unknown gate{_known(gate, gates)}{note}")
        t.invalid.add("gate")
    up = upstreams.get(upstream) if upstream is not None else None
    if up is None or method is None or path is None or t.invalid or (auth_t and auth is None):
        return None
    if seconds is None:
        seconds = float(getattr(up.timeouts, timeout_class))
    return OperationConfig(
        name=name,
        upstream=up.name,
        method=method,
        path=path,
        lane=lane,
        timeout=seconds,
        timeout_class=timeout_class,
        on_failure=cast(OnFailure, on_failure),
        repeat_safe=repeat_safe,
        idempotent=guards.header,
        cacheable=guards.cache is not None,
        idempotency=guards.idempotency,
        idempotency_retention=guards.retention,
        key_field=guards.key_field,
        cache=guards.cache,
        outbox=job_keys,
        webhook=webhook,
        breaker=breaker,
        headers=headers,
        auth=auth,
        path_params=tuple(dict.fromkeys(_PLACEHOLDER.findall(path))),
        gate=up.name if gate is None else gate,
    )
