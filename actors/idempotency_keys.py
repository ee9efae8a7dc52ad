"""Idempotency keys and the rules decided with them: pure functions, no I/O, no clock.

Used by the idempotency store (actors/idempotency.py), the call coordinator
(actors/keyed_call.py) and the durable outbox, which stamps and judges its jobs the same way:

- ``fingerprint(...)``: sha256 (hex) of the operation name and the canonical msgpack of its
  parameters (path params, query, the JSON body or the raw body; map keys sorted at every
  depth, so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` are one request). Headers, lane and
  deadline are not part of it: they do not change what the upstream is asked to do.
- ``derived_key(fp)``: the key of a call that brought none, ``"sha256:<fingerprint>"``.
- ``stamp_key_field(body, field, key)``: the JSON row with the key written into ``field``, so
  a Clay table that auto-dedupes on that column drops the second copy of an ambiguous retry.
- ``repeatable_in_doubt(...)``: may a call whose first attempt is in doubt run again?
- ``failure_leaves_doubt(...)``: does a failed call leave its key in doubt (it may have reached
  the upstream and nobody knows the answer), or may a retry simply run again?
- ``is_final_status(status)``: is an upstream answer stored and replayed under its key?
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from claykiln.actors.errors import BadRequestRefusal, Refusal, TimeoutRefusal, UpstreamRefusal
from claykiln.actors.upstream_http import NO_JSON
from claykiln.storage.codec import PACKING_ERRORS, packb

__all__ = [
    "CLAY_DEDUPE_MAX",
    "DERIVED_PREFIX",
    "MAX_KEY_LENGTH",
    "NOT_FINAL_STATUSES",
    "canonical",
    "derived_key",
    "failure_leaves_doubt",
    "fingerprint",
    "is_final_status",
    "repeatable_in_doubt",
    "stamp_key_field",
]

MAX_KEY_LENGTH: Final = 255
"""The longest key a caller may give (the IETF Idempotency-Key draft leaves it open; Stripe's)."""
CLAY_DEDUPE_MAX: Final = 200
"""Clay's auto-dedupe ignores values longer than this, so a stamped key must not be."""
DERIVED_PREFIX: Final = "sha256:"
NOT_FINAL_STATUSES: Final = frozenset({408, 409, 425, 429})
"""4xx answers that say "not now" rather than "no": a retry may get another answer."""


def _sorted(value: Any) -> Any:
    """``value`` with every map rebuilt in one key order (msgpack keeps a map's insertion order,
    so this makes the encoding independent of it): string keys in code point order, which is
    their UTF-8 byte order; a map with any other key in the byte order of the packed keys."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value  # the common leaves, without the isinstance walk below
    if isinstance(value, Mapping):
        if not value:
            return {}
        if all(type(k) is str for k in value):
            return {k: _sorted(value[k]) for k in sorted(value)}
        items = [(packb(k), k, _sorted(v)) for k, v in value.items()]
        items.sort(key=lambda item: item[0])
        return {k: v for _, k, v in items}
    if isinstance(value, list | tuple):
        return [_sorted(item) for item in value]
    return value


def canonical(value: Any) -> bytes:
    """The canonical msgpack of ``value``: maps sorted by packed key at every depth, tuples as
    arrays. Raises BadRequestRefusal for a value msgpack cannot encode."""
    try:
        return packb(_sorted(value))
    except PACKING_ERRORS as exc:
        msg = f"the call's parameters cannot be fingerprinted ({exc}); send plain msgpack values"
        raise BadRequestRefusal(msg) from exc


def fingerprint(
    operation: str,
    path_params: Mapping[str, Any] | None,
    query: Mapping[str, Any] | None,
    json: Any = NO_JSON,
    body: bytes | None = None,
) -> str:
    """The sha256 (64 hex digits) of what the call asks the upstream to do (see module doc).

    No body, a JSON body (``json``, which may be ``None`` for JSON null) and a raw ``body`` are
    three different requests even when their bytes would look alike.
    """
    if json is not NO_JSON:
        payload: list[Any] = ["json", _sorted(json)]
    elif body is not None:
        payload = ["body", bytes(body)]
    else:
        payload = ["none"]
    parts = [
        operation,
        _sorted(path_params) if path_params else {},
        _sorted(query) if query else {},
        *payload,
    ]
    try:
        packed = packb(parts)  # every map in it is sorted already
    except PACKING_ERRORS as exc:
        msg = f"the call's parameters cannot be fingerprinted ({exc}); send plain msgpack values"
        raise BadRequestRefusal(msg) from exc
    return hashlib.sha256(packed).hexdigest()


def derived_key(fp: str) -> str:
    """The key of a call that gave none: ``"sha256:" + fingerprint`` (71 characters)."""
    return DERIVED_PREFIX + fp


def stamp_key_field(json: Any, field: str, key: str, *, operation: str) -> dict[str, Any]:
    """A copy of the JSON row ``json`` with ``key`` in ``field``.

    Raises BadRequestRefusal (naming ``operation``) when the body is not a JSON object, when it
    already holds another value in ``field``, or when ``key`` is longer than Clay's dedupe
    limit (longer values are ignored by the dedupe, so the stamp would protect nothing).
    """
    if not isinstance(json, Mapping):
        msg = (
            f"{operation}: the operation writes the idempotency key into field {field!r} of the "
            "row, so the call must send json as a map (a JSON object)"
        )
        raise BadRequestRefusal(msg)
    if len(key) > CLAY_DEDUPE_MAX:
        msg = (
            f"{operation}: the idempotency key is {len(key)} characters; the operation writes it "
            f"into field {field!r}, and Clay's dedupe ignores values over {CLAY_DEDUPE_MAX} "
            "characters: use a shorter key"
        )
        raise BadRequestRefusal(msg)
    present = json.get(field)
    if present is not None and present != key:
        msg = (
            f"{operation}: field {field!r} of the row holds {str(present)[:80]!r}, but the daemon "
            "writes the idempotency key there; leave the field out or set it to the key"
        )
        raise BadRequestRefusal(msg)
    stamped = dict(json)
    stamped[field] = key
    return stamped


def repeatable_in_doubt(*, repeat_safe: bool, key_field: str | None) -> bool:
    """Whether a call whose earlier attempt is in doubt may run again under the same key.

    True for an operation declared ``repeat_safe`` (running twice does no harm) and for one with
    a ``key_field`` (a table deduping on that column drops the second row). Everything else
    (a routine start, a row push to a table without the dedupe) could happen twice.
    """
    return repeat_safe or key_field is not None


def failure_leaves_doubt(error: Refusal, *, repeatable: bool) -> bool:
    """Whether ``error``, ending a keyed call, leaves the key in doubt instead of forgetting it.

    In doubt: the request may have reached the upstream and no answer came (a timeout or a
    broken connection after the request was sent), and running it again is not known to be
    harmless (``repeatable`` False). Forgotten (a retry runs again): everything refused before a
    byte went out (breaker_open, rate_limited, lane_full, a connect failure, a lane timeout),
    an upstream that answered with an error status (Clay keeps no row it answered 5xx to), and
    any failure of a repeatable operation.
    """
    if repeatable or not isinstance(error, TimeoutRefusal | UpstreamRefusal):
        return False
    details = error.details or {}
    if "status" in details:
        return False
    return bool(details.get("sent", False))


def is_final_status(status: int) -> bool:
    """Whether an upstream answer is stored and replayed: every status below 500 but 408, 409,
    425 and 429 (those say "not now"; the retry may be answered otherwise)."""
    return status < 500 and status not in NOT_FINAL_STATUSES
