"""The server side's exception tree: every refusal an actor can give a caller.

    Refusal (code, message, retry_after, details)
    ├── BadRequestRefusal        bad_request
    ├── UnknownOperationRefusal  unknown_operation
    ├── BreakerOpenRefusal       breaker_open      retry_after: seconds until a probe may pass
    ├── LaneFullRefusal          lane_full         retry_after: a hint for the caller
    ├── RateLimitedRefusal       rate_limited      retry_after: seconds until a token / reopening
    ├── TimeoutRefusal           timeout           details.stage: connect|request|deadline|lane
    ├── UpstreamRefusal          upstream_error    details.status, details.body (excerpt)
    ├── IdempotencyInFlightRefusal  idempotency_in_flight  retry_after: when the first may end
    ├── IdempotencyMismatchRefusal  idempotency_mismatch   details: both fingerprints
    ├── IdempotencyInDoubtRefusal   idempotency_in_doubt   details: started_at, what was sent
    ├── StorageFullRefusal       storage_full
    ├── ForbiddenRefusal         forbidden
    ├── ShuttingDownRefusal      shutting_down
    └── InternalRefusal          internal

The server turns any Refusal into the wire error map ``{code, message, retry_after?, details?}``
(docs/protocol.md). Foreign errors (httpx, lmdb) are translated into this tree at the edge that
meets them; nothing else leaks to a caller.

These names end in ``Refusal`` on purpose: the client library's exceptions (``KilnError``,
``BreakerOpen``, ... in ``claykiln.daemon.client``) are the public vocabulary apps catch; these
are what the daemon raises inside to produce a wire error, and the two are never mixed.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequestRefusal",
    "BreakerOpenRefusal",
    "ForbiddenRefusal",
    "IdempotencyInDoubtRefusal",
    "IdempotencyInFlightRefusal",
    "IdempotencyMismatchRefusal",
    "InternalRefusal",
    "LaneFullRefusal",
    "RateLimitedRefusal",
    "Refusal",
    "ShuttingDownRefusal",
    "StorageFullRefusal",
    "TimeoutRefusal",
    "UnknownOperationRefusal",
    "UpstreamRefusal",
]


class Refusal(Exception):
    """A refusal with a stable wire code; ``retry_after`` is in seconds when set."""

    code: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        """The error map sent in a response: ``{code, message, retry_after?, details?}``."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            out["retry_after"] = round(max(0.0, self.retry_after), 3)
        if self.details:
            out["details"] = self.details
        return out


class BadRequestRefusal(Refusal):
    code = "bad_request"


class UnknownOperationRefusal(Refusal):
    code = "unknown_operation"


class BreakerOpenRefusal(Refusal):
    code = "breaker_open"


class LaneFullRefusal(Refusal):
    code = "lane_full"


class RateLimitedRefusal(Refusal):
    code = "rate_limited"


class TimeoutRefusal(Refusal):
    code = "timeout"


class UpstreamRefusal(Refusal):
    code = "upstream_error"


class IdempotencyInFlightRefusal(Refusal):
    code = "idempotency_in_flight"


class IdempotencyMismatchRefusal(Refusal):
    code = "idempotency_mismatch"


class IdempotencyInDoubtRefusal(Refusal):
    code = "idempotency_in_doubt"


class StorageFullRefusal(Refusal):
    code = "storage_full"


class ForbiddenRefusal(Refusal):
    code = "forbidden"


class ShuttingDownRefusal(Refusal):
    code = "shutting_down"


class InternalRefusal(Refusal):
    code = "internal"
