"""How the upstream executor's failures become ``claykiln.actors.errors`` refusals.

``UpstreamTimeout`` (a TimeoutRefusal) and ``UpstreamFailure`` (an UpstreamRefusal) carry
``retryable`` and ``sent`` as attributes and in ``details`` (with ``upstream``); ``sent`` is False
only when the request provably never left:

    no free client before the end       TimeoutRefusal   stage=request|deadline, phase=pool, sent=F
    httpx.ConnectTimeout                TimeoutRefusal   stage=connect, sent=False
    our cancel scope expired mid-call   TimeoutRefusal   stage=request|deadline ("deadline" when
                                                         the caller's deadline came first)
    httpx.ConnectError                  UpstreamRefusal  kind=connect, sent=False, retryable
    httpx.ReadError / WriteError / other
        network errors (resets)         UpstreamRefusal  kind=reset, retryable
    httpx.RemoteProtocolError and other
        protocol or decoding errors     UpstreamRefusal  kind=protocol, retryable
    body over MAX_BODY_BYTES            UpstreamRefusal  kind=too_large, not retryable
    httpx.LocalProtocolError            BadRequestRefusal (our side could not frame it)

Credentials never reach a log line, a repr or an exception message.
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from claykiln.actors.errors import BadRequestRefusal, TimeoutRefusal, UpstreamRefusal
from claykiln.actors.log import get_logger
from claykiln.actors.upstream_http import MAX_BODY_BYTES

__all__ = ["UpstreamErrors", "UpstreamFailure", "UpstreamTimeout"]

log = get_logger("claykiln.upstream")


class UpstreamTimeout(TimeoutRefusal):
    """A TimeoutRefusal raised by the executor; ``retryable`` and ``sent`` mirror ``details``."""

    def __init__(self, message: str, *, details: dict[str, Any]) -> None:
        super().__init__(message, details=details)
        self.retryable: bool = details["retryable"]
        self.sent: bool = details["sent"]


class UpstreamFailure(UpstreamRefusal):
    """A transport failure (``details.kind``); ``retryable`` and ``sent`` mirror ``details``."""

    def __init__(self, message: str, *, details: dict[str, Any]) -> None:
        super().__init__(message, details=details)
        self.retryable: bool = details["retryable"]
        self.sent: bool = details["sent"]


@attrs.frozen
class UpstreamErrors:
    """The refusals of upstream ``name``; ``credential`` is scrubbed from every message, and a
    failure to connect names ``origin`` (``host[:port]`` of the base URL): a resolver's "Name
    or service not known" alone does not say which host."""

    name: str
    credential: str | None = attrs.field(default=None, repr=False)
    origin: str = ""

    def timeout(
        self, end: float, limit: float, budget: float, *, sent: bool, phase: str | None = None
    ) -> UpstreamTimeout:
        """The call ran out of time at ``end``: its class budget (``limit``, ``budget`` s) or
        the caller's deadline, whichever came first; ``phase="pool"``: waiting for a client."""
        stage = "request" if end >= limit else "deadline"
        details = self._details(stage=stage, timeout=budget, retryable=True, sent=sent)
        what = "the caller's deadline passed" if stage == "deadline" else f"no answer in {budget}s"
        if phase is not None:
            details["phase"] = phase
            what += " waiting for a free connection"
        log.debug("upstream.timeout", upstream=self.name, stage=stage, phase=phase)
        return UpstreamTimeout(f"upstream {self.name}: {what}", details=details)

    def too_large(self, size: str) -> UpstreamFailure:
        msg = f"upstream {self.name}: response body {size} bytes > {MAX_BODY_BYTES}"
        details = self._details(kind="too_large", retryable=False, sent=True)
        return UpstreamFailure(msg, details=details)

    def translate(
        self, exc: httpx.HTTPError, budget: float
    ) -> UpstreamTimeout | UpstreamFailure | BadRequestRefusal:
        """The refusal for an httpx transport error (see the module table)."""
        name = self.name
        text = self.scrub(f"{type(exc).__name__}: {exc}")
        log.debug("upstream.transport_error", upstream=name, error=text)
        if isinstance(exc, httpx.LocalProtocolError):
            # Our side could not even frame the request (a bad header): the caller's fault,
            # not the upstream's -- never retried, never counted against its health.
            return BadRequestRefusal(f"the request could not be sent to {name}: {text}")
        if isinstance(exc, httpx.TimeoutException):
            connect = isinstance(exc, httpx.ConnectTimeout)
            stage = "connect" if connect else "request"
            details = self._details(stage=stage, timeout=budget, retryable=True, sent=not connect)
            return UpstreamTimeout(f"upstream {name}: {stage} timed out ({text})", details=details)
        if isinstance(exc, httpx.ConnectError):
            where = f" to {self.origin}" if self.origin else ""
            kind, sent, what = "connect", False, f"could not connect{where}"
        elif isinstance(exc, httpx.NetworkError):
            kind, sent, what = "reset", True, "connection reset"
        else:
            kind, sent, what = "protocol", True, "protocol error"
        details = self._details(kind=kind, retryable=True, sent=sent)
        return UpstreamFailure(f"upstream {name}: {what} ({text})", details=details)

    def scrub(self, text: str) -> str:
        """``text`` with the credential replaced by ``[REDACTED]``."""
        return text.replace(self.credential, "[REDACTED]") if self.credential else text

    def _details(self, **extra: Any) -> dict[str, Any]:
        return {"upstream": self.name, **extra}
