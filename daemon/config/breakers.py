"""Breaker keys of the config: ``[breakers.NAME]``, ``[operations.X] breaker`` and
``[upstreams.NAME] probe`` (CONTRACT: docs/configuration.md).

- ``[operations.X] breaker`` is ``"upstream"`` (the upstream's own breaker, keyed by the
  upstream's name: the default), ``"operation"`` (one of its own, keyed ``upstream/X``) or the
  name of a ``[breakers.NAME]`` entry, shared by every operation naming it.
- ``[breakers.NAME]`` takes the keys of ``[upstreams.U] breaker``; the keys it leaves out come
  from the breaker of ``U``, the upstream of the operations that name it (an empty table: a
  separate breaker with the same policy). A named breaker watches one upstream, so operations
  of two upstreams may not share one. A name may not be an upstream's, ``upstream`` or
  ``operation``.
- ``[upstreams.NAME] probe = { operation = "me", every = "30s" }``: a cheap call that tests the
  upstream; a half-open breaker of that operation makes it before letting a caller's own call
  through. The operation must be of that upstream, safe to repeat and take no path parameters.
  ``every`` is read by the health monitor's active probe (optional here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from claykiln.actors.breaker import BreakerPolicy
from claykiln.daemon.config.schema import (
    Invalid,
    Parser,
    Problems,
    Table,
    build_policy,
    duration,
    string,
)
from claykiln.daemon.config.types import OperationConfig, ProbeConfig, UpstreamConfig

__all__ = [
    "BREAKER_SCOPES",
    "breaker_scope",
    "check_breaker_names",
    "declared_breakers",
    "named_breakers",
    "probe",
    "resolve_probes",
]

BREAKER_SCOPES = ("upstream", "operation")
_NAME = string(example="clay-webhook")


def breaker_scope(raw: object) -> str:
    """``"upstream"``, ``"operation"`` or a breaker name (checked against [breakers] later)."""
    try:
        return _NAME(raw)
    except Invalid:
        msg = 'must be "upstream", "operation" or the name of a [breakers] entry'
        raise Invalid(msg) from None


def probe(t: Table | None) -> ProbeConfig | None:
    """``probe = { operation = "me", every = "30s" }`` of an upstream (None when absent)."""
    if t is None:
        return None
    operation = t.require("operation", string(example="me"), '"me"')
    every = t.get("every", duration(example="30s"), None)
    t.finish()
    if operation is None or t.invalid:
        return None
    return ProbeConfig(operation=operation, every=every)


def declared_breakers(
    t: Table, upstreams: Mapping[str, UpstreamConfig | None], note: Callable[[str], str]
) -> dict[str, Table]:
    """The ``[breakers]`` entries by name, their tables kept to build once operations are known;
    a name that collides with an upstream or a scope is reported (``note(name)`` is appended:
    where the entry came from)."""
    declared: dict[str, Table] = {}
    for name, table in t.named_tables():
        if name in upstreams or name in BREAKER_SCOPES:
            what = f"upstream {name} has a breaker of its own" if name in upstreams else "reserved"
            t.problems.add(
                f"{table.path}: a breaker may not be named like an upstream, "
                f'"upstream" or "operation" ({what}); rename the breaker{note(name)}'
            )
            continue
        declared[name] = table
    t.finish()
    return declared


def check_breaker_names(
    operations: Mapping[str, OperationConfig],
    declared: Mapping[str, Table],
    problems: Problems,
    note: Callable[[str], str],
) -> None:
    """Every operation's ``breaker`` is a scope or a declared name (``note(operation)`` is
    appended to a problem: where the operation came from)."""
    allowed = [*BREAKER_SCOPES, *sorted(declared)]
    for op in operations.values():
        if op.breaker not in BREAKER_SCOPES and op.breaker not in declared:
            shown = ", ".join(json.dumps(a) for a in allowed)
            problems.add(
                f"operations.{op.name}.breaker = {json.dumps(op.breaker)}: unknown breaker; "
                f"use one of {shown}{note(op.name)}"
            )


def named_breakers(
    declared: Mapping[str, Table],
    upstreams: Mapping[str, UpstreamConfig],
    operations: Mapping[str, OperationConfig],
    rules: Mapping[str, Parser[Any]],
) -> dict[str, BreakerPolicy]:
    """The policy of each named breaker: its table over the breaker of its upstream."""
    out: dict[str, BreakerPolicy] = {}
    for name, table in declared.items():
        users = {op.upstream for op in operations.values() if op.breaker == name}
        if len(users) > 1:
            table.problems.add(
                f"{table.path}: named by operations of upstreams {', '.join(sorted(users))}; a "
                "breaker watches one upstream: give each upstream's operations their own"
            )
            continue
        base = upstreams[users.pop()].breaker if users else BreakerPolicy()
        policy = build_policy(BreakerPolicy, table, rules, base=base)
        if policy is not None:
            out[name] = policy
    return out


def resolve_probes(
    upstreams: Mapping[str, UpstreamConfig],
    operations: Mapping[str, OperationConfig],
    problems: Problems,
    *,
    inherited: Collection[str],
    declared: Collection[str],
) -> dict[str, UpstreamConfig]:
    """Check each upstream's probe: one of its operations, safe to repeat, without parameters.

    An upstream whose probe comes from the embedded default (named in ``inherited``) loses it
    when its operation is gone (``[embedded_default] replace``), instead of failing on a key the
    file never set. A probe of an operation that is ``declared`` but invalid is not reported
    again (the operation's own problems are).
    """
    out = dict(upstreams)
    for up in upstreams.values():
        if up.probe is None:
            continue
        path = f"upstreams.{up.name}.probe.operation = {json.dumps(up.probe.operation)}"
        op = operations.get(up.probe.operation)
        if op is None and up.name in inherited and up.probe.operation not in declared:
            out[up.name] = attrs.evolve(up, probe=None)
        elif op is None and up.probe.operation in declared:
            pass
        elif op is None:
            known = ", ".join(sorted(o for o, c in operations.items() if c.upstream == up.name))
            problems.add(f"{path}: unknown operation; use one of {known or 'none'}")
        elif op.upstream != up.name:
            problems.add(f"{path}: the operation calls upstream {op.upstream}, not {up.name}")
        elif not op.repeat_safe:
            problems.add(
                f"{path}: a probe is sent whenever a breaker half-opens, so it must be safe to "
                f"repeat (a GET, or repeat_safe = true on operations.{op.name})"
            )
        elif op.path_params:
            params = ", ".join(op.path_params)
            problems.add(f"{path}: a probe takes no parameters, but its path needs {params}")
    return out
