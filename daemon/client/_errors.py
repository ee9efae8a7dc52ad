"""The client library's exception tree: every error a call through the daemon can raise.

    KilnError (code, message, retry_after, details)   any wire code; unknown codes land here
    ├── BadRequest            bad_request
    ├── UnknownMethod         unknown_method
    ├── UnknownOperation      unknown_operation
    ├── FrameTooLarge         frame_too_large
    ├── BreakerOpen           breaker_open            retry_after: seconds until a probe
    ├── LaneFull              lane_full               retry_after: a hint
    ├── RateLimited           rate_limited            retry_after: seconds until a token
    ├── KilnTimeout           timeout                 also a builtin TimeoutError; details.stage
    │                                                 ("client" when this library gave up)
    ├── UpstreamError         upstream_error          .status and .body from details
    ├── IdempotencyInFlight   idempotency_in_flight   retry_after: when the first call may end
    ├── IdempotencyMismatch   idempotency_mismatch    details: fingerprint, request_fingerprint
    ├── IdempotencyInDoubt    idempotency_in_doubt    details: started_at, sent, reason
    ├── StorageFull           storage_full
    ├── Forbidden             forbidden
    ├── ShuttingDown          shutting_down
    ├── InternalError         internal
    │   client side (raised by the library, never sent by the daemon):
    ├── DaemonUnavailable     daemon_unavailable      also a ConnectionError; names the socket path
    ├── ConnectionLost        connection_lost         also a ConnectionError; calls in flight failed
    └── ProtocolViolation     the violation's code    the daemon reported (or sent) a broken frame

``error_from_wire`` turns a response's error map ``{code, message, retry_after?, details?}``
(docs/protocol.md) into the matching class; ``KilnError.to_wire`` is its inverse. This module
imports nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "BreakerOpen",
    "ConnectionLost",
    "DaemonUnavailable",
    "Forbidden",
    "FrameTooLarge",
    "IdempotencyInDoubt",
    "IdempotencyInFlight",
    "IdempotencyMismatch",
    "InternalError",
    "KilnError",
    "KilnTimeout",
    "LaneFull",
    "ProtocolViolation",
    "RateLimited",
    "ShuttingDown",
    "StorageFull",
    "UnknownMethod",
    "UnknownOperation",
    "UpstreamError",
    "error_from_wire",
]


class KilnError(Exception):
    """An error with a stable code; ``retry_after`` is in seconds when the daemon gave one.

    ``code`` defaults to the class's ``CODE``; pass ``code=`` to keep a code this library does
    not know (a newer daemon). ``details`` is always a dict (empty when the daemon sent none).
    """

    CODE: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code: str = code if code is not None else self.CODE
        self.message = message
        self.retry_after = retry_after
        self.details: dict[str, Any] = dict(details) if details else {}

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __repr__(self) -> str:
        extra = f", retry_after={self.retry_after!r}" if self.retry_after is not None else ""
        extra += f", details={self.details!r}" if self.details else ""
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}{extra})"

    def to_wire(self) -> dict[str, Any]:
        """The wire error map ``{code, message, retry_after?, details?}`` for this error."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        if self.details:
            out["details"] = dict(self.details)
        return out


class BadRequest(KilnError):
    CODE = "bad_request"


class UnknownMethod(KilnError):
    CODE = "unknown_method"


class UnknownOperation(KilnError):
    CODE = "unknown_operation"


class FrameTooLarge(KilnError):
    CODE = "frame_too_large"


class BreakerOpen(KilnError):
    CODE = "breaker_open"


class LaneFull(KilnError):
    CODE = "lane_full"


class RateLimited(KilnError):
    CODE = "rate_limited"


class KilnTimeout(KilnError, TimeoutError):
    """The call ran out of time; ``details["stage"]`` says where (``"client"``: this library)."""

    CODE = "timeout"


class UpstreamError(KilnError):
    """The upstream answered with a failure; ``status`` and ``body`` come from ``details``."""

    CODE = "upstream_error"

    @property
    def status(self) -> int | None:
        value = self.details.get("status")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def body(self) -> Any:
        return self.details.get("body")


class IdempotencyInFlight(KilnError):
    """A call with the same key is still running and did not end within this call's deadline;
    retry with the same key (after ``retry_after``) to get its answer."""

    CODE = "idempotency_in_flight"


class IdempotencyMismatch(KilnError):
    """The key was used for another request; ``details`` names both fingerprints."""

    CODE = "idempotency_mismatch"


class IdempotencyInDoubt(KilnError):
    """An earlier call with this key may have reached the upstream and its answer is unknown
    (the daemon stopped, or it timed out after sending), and the operation is not safe to run
    twice. ``details``: ``started_at`` (unix seconds), ``sent`` (method, path), ``reason``.
    Check the upstream, then retry with a new key or have an admin forget this one."""

    CODE = "idempotency_in_doubt"

    @property
    def started_at(self) -> float | None:
        return _number(self.details.get("started_at"))

    @property
    def sent(self) -> dict[str, Any]:
        value = self.details.get("sent")
        return dict(value) if isinstance(value, Mapping) else {}


class StorageFull(KilnError):
    CODE = "storage_full"


class Forbidden(KilnError):
    CODE = "forbidden"


class ShuttingDown(KilnError):
    CODE = "shutting_down"


class InternalError(KilnError):
    CODE = "internal"


class DaemonUnavailable(KilnError, ConnectionError):
    """No connection to the daemon could be made; ``path`` is the socket that was tried."""

    CODE = "daemon_unavailable"

    @classmethod
    def at(cls, path: object, reason: str, *, waited: float | None = None) -> DaemonUnavailable:
        """The error for a failed connect to ``path``, with the hint that fixes it; ``waited``:
        the ``connect_timeout`` spent retrying a daemon that looked like it was restarting
        (``details["waited_s"]``), None when the failure was not worth waiting for."""
        tried = "" if waited is None else f", retried for {waited:g} s"
        msg = (
            f"cannot connect to the claykiln daemon at {path} ({reason}{tried}); start it with "
            f"`kiln serve`, or point the client at its socket with KILN_SOCKET=/path/to/kiln.sock "
            f"or socket_path=..."
        )
        details: dict[str, Any] = {"path": str(path), "reason": reason}
        if waited is not None:
            details["waited_s"] = waited
        return cls(msg, details=details)

    @property
    def path(self) -> str | None:
        value = self.details.get("path")
        return value if isinstance(value, str) else None


class ConnectionLost(KilnError, ConnectionError):
    """The connection broke while this call was in flight; it may or may not have run.

    The library never resends such a call; the next call opens a new connection.
    """

    CODE = "connection_lost"


class ProtocolViolation(KilnError):
    """The daemon reported a protocol violation (``protocol_error``) or sent a broken frame.

    ``code`` is the violation's code (``bad_request``, ``frame_too_large``, ...); the
    connection is closed and the next call opens a new one.
    """

    CODE = "protocol_error"


_BY_CODE: dict[str, type[KilnError]] = {
    cls.CODE: cls
    for cls in (
        BadRequest,
        UnknownMethod,
        UnknownOperation,
        FrameTooLarge,
        BreakerOpen,
        LaneFull,
        RateLimited,
        KilnTimeout,
        UpstreamError,
        IdempotencyInFlight,
        IdempotencyMismatch,
        IdempotencyInDoubt,
        StorageFull,
        Forbidden,
        ShuttingDown,
        InternalError,
    )
}


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def error_from_wire(error: Mapping[str, Any]) -> KilnError:
    """The exception for a wire error map; tolerant of missing or mistyped fields.

    A known code gives its class; an unknown code gives a plain ``KilnError`` keeping the code.
    A missing code is ``internal``; a missing message is replaced by a description of the map.
    """
    raw_code = error.get("code")
    code = raw_code if isinstance(raw_code, str) and raw_code else "internal"
    raw_message = error.get("message")
    message = raw_message if isinstance(raw_message, str) else f"daemon error {dict(error)!r}"
    raw_details = error.get("details")
    details = raw_details if isinstance(raw_details, Mapping) else None
    cls = _BY_CODE.get(code, KilnError)
    return cls(message, code=code, retry_after=_number(error.get("retry_after")), details=details)
