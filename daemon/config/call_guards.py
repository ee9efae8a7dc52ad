"""An operation's idempotency and degradation keys. Part of ``build._operation``.

    idempotency = "required" | "derive" | "off"    records of idempotency keys
    idempotency_retention = "24h"                   how long a record lives
    idempotency_header = true                       send the key upstream as Idempotency-Key
                                                    (``idempotent``: its old name, still read)
    key_field = "kiln_key"                          write the key into this field of the row
    cache = { fresh_for, stale_for, max_age }       keep the last good answer (ages)
    cacheable = true                                the same with the default ages
    cache_key = "{routine_id}"                      one answer per rendered template
    on_failure = "fallback"                         (read by the caller) needs a cache

Problems are reported to the operation's table, each naming the key and the fix.
"""

from __future__ import annotations

from typing import Final, cast

import attrs

from claykiln.actors.fallback_policy import CachePolicy
from claykiln.daemon.config.schema import Invalid, Table, boolean, choice, duration
from claykiln.daemon.config.types import IdempotencyMode

__all__ = ["BODY_METHODS", "DEFAULT_RETENTION", "IDEMPOTENCY_MODES", "GuardKeys", "read_guards"]

BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})  # what key_field can stamp a row into
IDEMPOTENCY_MODES: Final = ("required", "derive", "off")
DEFAULT_RETENTION: Final = 24 * 3600.0
_TEMPLATE_RULE: Final = (
    'must be a template of {placeholders} and text, e.g. "{routine_id}/{run_id}"'
)
_CACHE_EXAMPLE: Final = 'cache = { fresh_for = "1m", stale_for = "10m", max_age = "24h" }'


@attrs.frozen
class GuardKeys:
    """What ``read_guards`` found (defaults for keys that were absent or invalid)."""

    idempotency: IdempotencyMode = "off"
    retention: float = DEFAULT_RETENTION
    header: bool = False
    key_field: str | None = None
    cache: CachePolicy | None = None


def read_guards(t: Table, method: str | None, on_failure: str) -> GuardKeys:
    """Read the keys above from the operation table ``t``; contradictions are reported and
    mark the key invalid in ``t`` (so the operation is dropped)."""
    mode = t.get("idempotency", choice(*IDEMPOTENCY_MODES, fold_case=False), "off")
    retention = t.get("idempotency_retention", duration(example="24h"), DEFAULT_RETENTION)
    header = t.get("idempotency_header", boolean, None)
    old_header = t.get("idempotent", boolean, None)
    key_field = t.get("key_field", _field_name, None)
    cacheable = t.get("cacheable", boolean, None)
    template = t.get("cache_key", _cache_key, None)
    cache = _cache_policy(t, t.table("cache"), cacheable, template)
    if header is not None and old_header is not None:
        t.problems.add(
            f"{t.sub_path('idempotent')}: the old name of idempotency_header; keep only "
            "idempotency_header"
        )
        t.invalid.add("idempotent")
    if on_failure == "fallback" and cache is None and "cache" not in t.invalid:
        t.problems.add(
            f'{t.sub_path("on_failure")} = "fallback": answers come from the cache, which this '
            f"operation does not keep; add {_CACHE_EXAMPLE}"
        )
        t.invalid.add("on_failure")
    if key_field is not None and method is not None and method not in BODY_METHODS:
        t.problems.add(
            f"{t.sub_path('key_field')}: {method} sends no JSON row to write the key into; "
            f"key_field needs one of {', '.join(sorted(BODY_METHODS))}"
        )
        t.invalid.add("key_field")
    return GuardKeys(
        idempotency=cast(IdempotencyMode, mode),
        retention=retention,
        header=bool(header if header is not None else old_header),
        key_field=key_field,
        cache=cache,
    )


def _field_name(raw: object) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= 200 or not raw.strip():
        msg = 'must be the name of a column of the row (1-200 characters), e.g. "kiln_key"'
        raise Invalid(msg)
    return raw


def _cache_key(raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise Invalid(_TEMPLATE_RULE)
    depth = 0
    name = ""
    for char in raw:
        if char == "{":
            if depth:
                break
            depth, name = 1, ""
        elif char == "}":
            if not depth or not name.isidentifier():
                shown = "{" + name + "}" if depth else "}"
                msg = f"{shown} is not a placeholder (an identifier in braces); {_TEMPLATE_RULE}"
                raise Invalid(msg)
            depth = 0
        elif depth:
            name += char
    if depth:
        msg = f"has an unbalanced {{; {_TEMPLATE_RULE}"
        raise Invalid(msg)
    return raw


def _cache_policy(
    t: Table, cache_t: Table | None, cacheable: bool | None, template: str | None
) -> CachePolicy | None:
    """The ``cache`` table (ages), ``cacheable = true`` alone (default ages), or None."""
    if cache_t is None and not cacheable:
        if template is not None:
            t.problems.add(
                f"{t.sub_path('cache_key')}: the operation keeps no answers; add "
                f"{_CACHE_EXAMPLE} or drop cache_key"
            )
            t.invalid.add("cache_key")
        return None
    if cache_t is not None and cacheable is False:
        t.problems.add(
            f"{t.sub_path('cacheable')}: false, but the operation has a cache table; drop one"
        )
        t.invalid.add("cacheable")
        return None
    d = CachePolicy()
    if cache_t is None:
        return CachePolicy(key_template=template)
    ages = {
        name: cache_t.get(name, duration(example=example), getattr(d, name))
        for name, example in (("fresh_for", "1m"), ("stale_for", "10m"), ("max_age", "24h"))
    }
    cache_t.finish()
    if cache_t.invalid:
        t.invalid.add("cache")
        return None
    try:
        return CachePolicy(key_template=template, **ages)
    except ValueError as exc:
        t.problems.add(f"{cache_t.path}: {exc}")
        t.invalid.add("cache")
        return None
