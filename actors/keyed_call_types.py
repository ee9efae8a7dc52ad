"""The values the call coordinator (actors/keyed_call.py) hands around: an operation's guard,
a prepared call, and the checks and answers both its reader and its tasks use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

import attrs

from claykiln.actors.call import CallRequest, Operation, check_headers
from claykiln.actors.errors import BadRequestRefusal
from claykiln.actors.fallback_policy import CachePolicy
from claykiln.actors.idempotency_flights import Started
from claykiln.actors.idempotency_record import IdempotencyRecord
from claykiln.storage import unpack

__all__ = [
    "NO_GUARD",
    "CallGuard",
    "IdempotencyMode",
    "PackedAnswer",
    "PreparedCall",
    "check_caller_headers",
    "replayed",
]

IdempotencyMode = Literal["required", "derive", "off"]


@attrs.frozen
class CallGuard:
    """An operation's idempotency and degradation settings.

    ``idempotency``: ``required`` (a call without ``idempotency_key`` is ``bad_request``),
    ``derive`` (a call without one gets the derived key) or ``off`` (no records; a given key
    is only sent upstream where the operation says so). ``retention``: seconds a record lives
    after its call started. ``key_field``: the JSON field of the row the key is written into.
    ``cache``: keep the last good answer (None: not cacheable). ``fallback``: answer failures
    from the cache (``on_failure = "fallback"``; needs ``cache``).
    """

    idempotency: IdempotencyMode = "off"
    retention: float = 86_400.0
    key_field: str | None = None
    cache: CachePolicy | None = None
    fallback: bool = False


NO_GUARD: Final = CallGuard()


@attrs.frozen
class PreparedCall:
    """What ``precheck`` hands the handler: the request as it goes upstream (key set, row
    stamped), and what the key's record and the cache need."""

    request: CallRequest
    operation: Operation
    guard: CallGuard
    key: str | None  # None: no record is kept
    fingerprint: str | None
    repeatable: bool
    cache_key: str | None
    sent: Mapping[str, Any] = attrs.field(factory=dict)  # what the key's record says was sent
    started: Started | None = None  # the key's claim made on the reader (None: ``call`` claims)


def check_caller_headers(op: Operation, headers: Mapping[str, str]) -> None:
    """Refuse headers a caller may not send (``check_headers``) and the operation's credential
    header, before anything is answered: a replay or a fallback must not accept a request the
    pipeline would refuse."""
    check_headers(headers)
    if op.auth_header:
        auth = op.auth_header.lower()
        for name in headers:
            if name.lower() == auth:
                msg = f"header {name!r} is the operation's credential; the daemon sets it"
                raise BadRequestRefusal(msg)


@attrs.frozen
class PackedAnswer:
    """A replay the precheck answers with the stored bytes: ``body`` is the answer map
    (``replayed: true``, its key) packed as msgpack, sent as it is, never decoded on the way
    (actors/idempotency_record.py ``replay_body``). ``result()`` decodes it, for what must look
    inside."""

    body: bytes
    outcome: ClassVar[str] = "replayed"  # what ``kiln top`` and the metrics count it as

    def result(self) -> dict[str, Any]:
        answer = unpack(self.body)
        assert isinstance(answer, dict)
        return answer


def replayed(record: IdempotencyRecord) -> dict[str, Any]:
    """The answer a completed ``record`` replays (``replayed: true``, its key)."""
    out = dict(record.result or {})
    out["replayed"] = True
    out["idempotency_key"] = record.key
    return out
