"""The server side's exception tree: every refusal an actor can give a caller.

    KilnError (code, message, retry_after, details)
    ├── BadRequest            bad_request
    ├── UnknownOperation      unknown_operation
    ├── BreakerOpen           breaker_open        retry_after = seconds until a probe may pass
    ├── LaneFull              lane_full           retry_after = a hint for the caller
    ├── RateLimited           rate_limited        retry_after = seconds until a token / gate opens
    ├── CallTimeout           timeout             details.stage: connect|request|deadline|lane
    ├── UpstreamError         upstream_error      details.status, details.body (excerpt)
    ├── StorageFullError      storage_full
    ├── Forbidden             forbidden
    ├── ShuttingDown          shutting_down
    └── InternalError         internal

The server turns any KilnError into the wire error map ``{code, message, retry_after?,
details?}`` (docs/protocol.md). Foreign errors (httpx, lmdb) are translated into this tree at
the edge that meets them; nothing else leaks to a caller.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "BreakerOpen",
    "CallTimeout",
    "Forbidden",
    "InternalError",
    "KilnError",
    "LaneFull",
    "RateLimited",
    "ShuttingDown",
    "StorageFullError",
    "UnknownOperation",
    "UpstreamError",
]


class KilnError(Exception):
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


class BadRequest(KilnError):
    code = "bad_request"


class UnknownOperation(KilnError):
    code = "unknown_operation"


class BreakerOpen(KilnError):
    code = "breaker_open"


class LaneFull(KilnError):
    code = "lane_full"


class RateLimited(KilnError):
    code = "rate_limited"


class CallTimeout(KilnError):
    code = "timeout"


class UpstreamError(KilnError):
    code = "upstream_error"


class StorageFullError(KilnError):
    code = "storage_full"


class Forbidden(KilnError):
    code = "forbidden"


class ShuttingDown(KilnError):
    code = "shutting_down"


class InternalError(KilnError):
    code = "internal"
