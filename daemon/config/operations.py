"""``[operations.NAME]``: one named call the daemon may make, checked against the upstreams,
lanes and gates the file defines. Part of :func:`claykiln.daemon.config.build.build_config`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import cast

import attrs

from claykiln.actors.lanes import LanePolicy
from claykiln.actors.upstream import TimeoutClasses
from claykiln.daemon.config import breakers as breaker_keys
from claykiln.daemon.config.call_guards import read_guards
from claykiln.daemon.config.fields import auth_table, header_table, unknown_hint
from claykiln.daemon.config.outbox import read_outbox
from claykiln.daemon.config.schema import Invalid, Table, boolean, choice, duration, string
from claykiln.daemon.config.types import OnFailure, OperationConfig, UpstreamConfig

__all__ = ["METHODS", "TIMEOUT_CLASSES", "operation"]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
# RFC 9110 idempotent methods: repeating them is safe unless the config says otherwise.
REPEAT_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
CUSTOM_TIMEOUT = "custom"
TIMEOUT_CLASSES = tuple(f.name for f in attrs.fields(TimeoutClasses))
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


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


def operation(
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
    headers: dict[str, str] = t.get("headers", header_table, {})
    auth_t = t.table("auth")
    auth = auth_table(auth_t)
    t.finish()
    if upstream is not None and upstream not in upstreams:
        why = f"unknown upstream{unknown_hint(upstream, upstreams)}{note}"
        t.problems.bad_value(t.sub_path("upstream"), upstream, why)
    if "lane" not in t.invalid and lane not in lanes:
        known = ", ".join(sorted(lanes)) or "none"
        if "lane" in t.data:
            why = f"unknown lane{unknown_hint(lane, lanes)}{note}"
            t.problems.bad_value(t.sub_path("lane"), lane, why)
        else:
            t.problems.add(
                f"{t.sub_path('lane')}: not set, and the default lane {json.dumps(lane)} is not "
                f"defined; set lane to one of: {known}{note}"
            )
        t.invalid.add("lane")
    # A gate named like the operation's own (unknown) upstream was just reported as such.
    if gate is not None and gate not in gates and gate != upstream:
        t.problems.bad_value(
            t.sub_path("gate"), gate, f"unknown gate{unknown_hint(gate, gates)}{note}"
        )
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
