"""Graceful degradation's facts: cache policies, staleness, cache keys, which failures fall back.

Sans-I/O. The fallback cache actor (actors/fallback.py) keeps the last good answer per key; the
call coordinator (actors/keyed_call.py) asks these functions whether a failure may be answered
from it and how that answer is labelled.

Staleness is by age (seconds since the answer was stored, wall clock): below ``fresh_for`` it
is ``fresh``, below ``stale_for`` ``stale``, up to ``max_age`` ``very_stale``; older answers are
never served (the caller gets the original error).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from claykiln.actors.errors import BadRequestRefusal, Refusal

__all__ = [
    "FALLBACK_CODES",
    "CachePolicy",
    "Staleness",
    "cache_key",
    "fallback_result",
    "falls_back",
    "staleness",
    "template_names",
]

FALLBACK_CODES: Final = frozenset(
    {"breaker_open", "timeout", "upstream_error", "lane_full", "rate_limited"}
)
"""Failures of the upstream (or of the way to it) that a cached answer may stand in for.
A caller's mistake (bad_request, unknown_operation), an idempotency refusal or a full store
never falls back: the cache would hide a problem only the caller or an operator can fix."""

_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        msg = f"cache.{attribute.name} must be > 0 seconds, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class CachePolicy:
    """An operation's ``cache = { fresh_for, stale_for, max_age }`` (seconds, ages of the stored
    answer, ``fresh_for <= stale_for <= max_age``) and its ``cache_key`` template (None: the
    derived key, i.e. one entry per distinct request)."""

    fresh_for: float = attrs.field(default=60.0, validator=_positive)
    stale_for: float = attrs.field(default=600.0, validator=_positive)
    max_age: float = attrs.field(default=86_400.0, validator=_positive)
    key_template: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.fresh_for <= self.stale_for <= self.max_age:
            msg = (
                f"cache ages must grow: fresh_for ({self.fresh_for:g}s) <= stale_for "
                f"({self.stale_for:g}s) <= max_age ({self.max_age:g}s)"
            )
            raise ValueError(msg)


class Staleness(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    VERY_STALE = "very_stale"


def staleness(age: float, policy: CachePolicy) -> Staleness | None:
    """The label of an answer ``age`` seconds old; None when it is past ``max_age``.

    A negative age (the wall clock went back) counts as 0: the answer is as fresh as it gets.
    """
    age = max(0.0, age)
    if age < policy.fresh_for:
        return Staleness.FRESH
    if age < policy.stale_for:
        return Staleness.STALE
    if age <= policy.max_age:
        return Staleness.VERY_STALE
    return None


def template_names(template: str) -> tuple[str, ...]:
    """The ``{name}`` placeholders of a ``cache_key`` template, in order."""
    return tuple(_PLACEHOLDER.findall(template))


def cache_key(
    operation: str,
    policy: CachePolicy,
    *,
    fingerprint: str,
    path_params: Mapping[str, Any] | None,
    query: Mapping[str, Any] | None,
) -> str:
    """The key an answer is kept under: ``operation`` plus the rendered ``cache_key`` template
    (placeholders from the path params, then the query), or plus the request's fingerprint.

    Raises BadRequestRefusal naming a placeholder the call gives no value for.
    """
    template = policy.key_template
    if template is None:
        return f"{operation}\x00{fingerprint}"
    params = dict(query or {})
    params.update(path_params or {})

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            msg = (
                f"{operation}: its cache_key {template!r} needs {name!r}, which the call gives "
                "neither as a path parameter nor in the query"
            )
            raise BadRequestRefusal(msg)
        return str(params[name])

    return f"{operation}\x00{_PLACEHOLDER.sub(fill, template)}"


def falls_back(error: Refusal) -> bool:
    """Whether a call that failed with ``error`` may be answered from the cache."""
    return error.code in FALLBACK_CODES


def fallback_result(
    result: Mapping[str, Any], label: Staleness, age: float, error: Refusal
) -> dict[str, Any]:
    """The wire result of a fallback: the cached result with ``fallback: true``, its
    ``staleness``, its ``age`` in seconds and the ``error`` map that caused it."""
    out = dict(result)
    out["fallback"] = True
    out["staleness"] = label.value
    out["age"] = round(max(0.0, age), 3)
    out["error"] = error.to_wire()
    return out
