"""The call's values and pure decisions: operations, requests, results, health outcomes.

Everything here is sans-I/O: what an operation is, what a validated ``call`` carries, how a
response body is decoded, which caller headers are refused, and what an HTTP status or a
transport error means for the upstream's health (the breaker's view). The pipeline
(actors/pipeline.py) walks the actors; these are the facts it decides with.

JSON rules, both ways: a caller's ``json`` must be JSON (``check_json``: no NaN or Infinity,
which Python would send as invalid JSON); an upstream's JSON body is carried back only up to
``MAX_JSON_DEPTH`` levels of nesting (``decode_body``: deeper is ``upstream_error``, and the
pipeline counts the attempt as the upstream's failure, not a success).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from itertools import chain
from typing import Any, Final

import attrs

from claykiln.actors.breaker_types import Outcome
from claykiln.actors.errors import BadRequestRefusal, Refusal, TimeoutRefusal, UpstreamRefusal
from claykiln.actors.upstream_http import NO_JSON, HttpResponse

__all__ = [
    "BODY_EXCERPT",
    "MAX_JSON_DEPTH",
    "RESERVED_HEADERS",
    "CallRequest",
    "CallResult",
    "Operation",
    "check_headers",
    "check_json",
    "decode_body",
    "error_outcome",
    "excerpt",
    "health_outcome",
]

BODY_EXCERPT: Final = 512
MAX_JSON_DEPTH: Final = 500
"""Levels of nesting of an upstream JSON body the daemon carries back: a reply wraps the body in
two more, and msgpack packs at most 511 (Python's own JSON decoder stops near 1000)."""


@attrs.frozen
class Operation:
    """A named call the daemon may make (``[operations.NAME]``); hosts come from config only.

    ``gate``: the rate gate key that paces the call and that its 429/503 Retry-After closes
    (default: the upstream's name, one gate shared by every operation of the upstream).
    """

    name: str
    upstream: str
    method: str
    path: str
    lane: str
    timeout: float
    timeout_class: str = "request"
    repeat_safe: bool = False
    idempotent: bool = False
    cacheable: bool = False
    on_failure: str = "error"
    breaker_scope: str = "upstream"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    auth_header: str | None = None
    credential: str | None = attrs.field(default=None, repr=False)
    gate: str = attrs.field()

    @gate.default
    def _gate_default(self) -> str:
        return self.upstream

    @property
    def breaker_key(self) -> str:
        """The upstream's name (``breaker_scope`` "upstream"), ``upstream/name`` ("operation"),
        or the name of a shared breaker (``[breakers.NAME]``)."""
        if self.breaker_scope == "upstream":
            return self.upstream
        if self.breaker_scope == "operation":
            return f"{self.upstream}/{self.name}"
        return self.breaker_scope


@attrs.frozen
class CallRequest:
    """A validated ``call``: ``deadline`` is absolute trio time (None: only the class timeout)."""

    operation: str
    path_params: Mapping[str, Any] = attrs.field(factory=dict)
    query: Mapping[str, str] | None = None
    json: Any = NO_JSON
    body: bytes | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    lane: str | None = None
    deadline: float | None = None
    idempotency_key: str | None = None


@attrs.frozen
class CallResult:
    status: int
    headers: Mapping[str, str]
    body: Any
    attempts: int
    duration_ms: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": dict(self.headers),
            "body": self.body,
            "attempts": self.attempts,
            "duration_ms": round(self.duration_ms, 3),
        }


def decode_body(response: HttpResponse) -> Any:
    """JSON bodies decoded; text as str; anything else as bytes. A body already decoded
    (``response.decoded``) is returned as it is.

    Raises UpstreamRefusal (``details.kind = "body"``, not retryable) for a JSON body nested
    deeper than MAX_JSON_DEPTH levels: the daemon could not carry it back to the caller.
    """
    if response.decoded is not NO_JSON:
        return response.decoded
    ctype = response.headers.get("content-type", "").lower()
    if "json" in ctype:
        try:
            value = json.loads(response.body)
        except RecursionError:
            raise _too_deep(response) from None
        except ValueError:
            pass
        else:
            # Each level takes two bytes ("[]"): a shorter body cannot be too deep.
            if len(response.body) > 2 * MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
                raise _too_deep(response)
            return value
    if ctype.startswith("text/") or "json" in ctype:
        return response.body.decode("utf-8", "replace")
    return response.body


def _too_deep(response: HttpResponse) -> UpstreamRefusal:
    msg = (
        f"the upstream answered {response.status} with a JSON body nested deeper than "
        f"{MAX_JSON_DEPTH} levels, which the daemon cannot carry back"
    )
    details = {
        "status": response.status,
        "kind": "body",
        "reason": f"nests deeper than {MAX_JSON_DEPTH} levels",
        "body": excerpt(response.body),
        "sent": True,
        "retryable": False,
    }
    return UpstreamRefusal(msg, details=details)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and maps more than ``limit`` levels deep; walks a level at
    a time, without recursion."""
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            item
            for item in chain.from_iterable(_children(node) for node in level)
            if isinstance(item, list | dict)
        ]
    return False


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        return iter(node.values())
    if isinstance(node, list):
        return iter(node)
    return iter(())


def check_json(value: Any, where: str = "call: json") -> None:
    """Refuse (BadRequestRefusal naming where) a value JSON cannot carry: NaN, Infinity or
    -Infinity anywhere in it (Python's encoder would write them as invalid JSON)."""
    if type(value) is dict and not any(type(v) in (float, list, dict) for v in value.values()):
        return  # the common case: a flat map of strings and integers
    level = [value]
    while level:
        if any(type(x) is float and not math.isfinite(x) for x in level):
            msg = (
                f"{where} holds NaN or Infinity at {_first_non_finite(value)}, which JSON "
                "cannot carry; send null or a string instead"
            )
            raise BadRequestRefusal(msg)
        level = list(chain.from_iterable(_children(node) for node in level))


def _first_non_finite(value: Any, path: str = "$") -> str:
    """The path (``$.a[2]``) of the first non-finite float in ``value``, depth first."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return at if len(at) <= 200 else at[:200] + "..."
        if isinstance(node, dict):
            stack.extend((v, f"{at}.{str(k)[:40]}") for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((v, f"{at}[{i}]") for i, v in reversed(list(enumerate(node))))
    return path


def health_outcome(status: int) -> Outcome:
    """What an HTTP status means for the upstream's health (the breaker's view)."""
    if status >= 500 or status == 408:
        return Outcome.FAILURE
    if status == 429:
        return Outcome.IGNORED
    return Outcome.SUCCESS


# Headers a caller may not set: the host, the message framing and hop-by-hop headers belong to
# the daemon's HTTP client (a caller's Host could steer the request, conflicting framing is a
# request-smuggling risk at a proxy).
RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "expect",
    }
)
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
MAX_HEADERS: Final = 64
MAX_HEADER_VALUE: Final = 8192


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse reserved names, names that are not HTTP tokens and values with control bytes."""
    if len(headers) > MAX_HEADERS:
        msg = f"call: at most {MAX_HEADERS} headers, got {len(headers)}"
        raise BadRequestRefusal(msg)
    for name, value in headers.items():
        if not name or not set(name) <= _TOKEN_CHARS:
            msg = f"call: header name {name!r} is not a valid HTTP token"
            raise BadRequestRefusal(msg)
        if name.lower() in RESERVED_HEADERS:
            msg = f"call: header {name!r} is set by the daemon and cannot be given by a caller"
            raise BadRequestRefusal(msg)
        if len(value) > MAX_HEADER_VALUE or any(c in value for c in "\r\n\x00"):
            msg = (
                f"call: header {name!r}: values may not hold CR, LF or NUL "
                f"or exceed {MAX_HEADER_VALUE} characters"
            )
            raise BadRequestRefusal(msg)


def error_outcome(error: Refusal) -> Outcome:
    """What a transport error means for health.

    A timeout cut short by the caller's own deadline, or spent waiting for a free connection,
    says nothing about the upstream: one app with tight deadlines must not open the breaker
    that every app on the host shares. Class timeouts, connect failures and resets do count.
    """
    details = error.details or {}
    if isinstance(error, TimeoutRefusal) and (
        details.get("stage") == "deadline" or details.get("phase") == "pool"
    ):
        return Outcome.IGNORED
    return Outcome.FAILURE


def excerpt(body: bytes) -> str:
    text = body[:BODY_EXCERPT].decode("utf-8", "replace")
    return text + ("..." if len(body) > BODY_EXCERPT else "")
