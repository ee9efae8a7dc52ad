"""The peer ``kiln bench --scenario outage-peers`` measures the daemon against: what a Python
user would pick instead of a daemon, one per process.

Each process holds one ``pybreaker.CircuitBreaker`` (``fail_max`` consecutive failures open it
for ``reset_timeout`` seconds, then one trial call decides) and each caller thread wraps its
GET in ``tenacity`` (``attempts`` tries in all, capped exponential backoff with full jitter:
``wait_random_exponential(multiplier=backoff_base, max=backoff_cap)``, the daemon's own retry
shape) around ``breaker.call``, so every attempt is seen by the breaker and an open breaker's
``CircuitBreakerError`` is never retried. pybreaker holds its lock during the guarded call, so
the callers of one process go through their breaker one at a time: that is how the library
behaves, and it is measured as such.

The HTTP client is the standard library's ``http.client``, one keep-alive connection per caller
(only actors/ may import httpx). Like urllib3, a request that fails on a reused connection
before any answer (the server closed it while idle) is sent once more on a fresh one; that
first try never reached the upstream and is not counted.

Outcome codes, in the daemon's vocabulary so one set of figures covers both sides: ``ok``,
``breaker_open`` (``CircuitBreakerError``, including the call whose failure tripped it),
``upstream_error`` (a 5xx after the last try) and ``connection_error`` (no answer at all).
"""

from __future__ import annotations

import http.client
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

import attrs
import pybreaker
import tenacity

__all__ = ["DirectPeer", "PeerPolicy", "UpstreamFailure"]

STALE_CONNECTION_ERRORS: Final = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
)


@attrs.frozen
class PeerPolicy:
    """The peer's breaker and retry settings (seconds)."""

    fail_max: int = 5
    reset_timeout: float = 30.0
    attempts: int = 3
    backoff_base: float = 0.25
    backoff_cap: float = 10.0
    request_timeout: float = 30.0


class UpstreamFailure(Exception):
    """One failed attempt: ``status`` is the 5xx, or None when no answer came at all."""

    def __init__(self, status: int | None) -> None:
        super().__init__(f"upstream answered {status}" if status else "no answer from upstream")
        self.status = status


class _Caller:
    """One caller thread's connection, retry loop and counters (only that thread touches it)."""

    def __init__(self, peer: DirectPeer) -> None:
        self.peer = peer
        self.conn: http.client.HTTPConnection | None = None
        self.statuses: Counter[int] = Counter()
        self.connection_errors = 0
        policy = peer.policy
        self.retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_random_exponential(
                multiplier=policy.backoff_base, max=policy.backoff_cap
            ),
            retry=tenacity.retry_if_exception_type(UpstreamFailure),
            reraise=True,
        )

    def call(self) -> str:
        """One logical call; its outcome code (never raises for a failing upstream)."""
        try:
            self.retrying(self.peer.breaker.call, self._get)
        except pybreaker.CircuitBreakerError:
            return "breaker_open"
        except UpstreamFailure as failure:
            return "connection_error" if failure.status is None else "upstream_error"
        return "ok"

    def _get(self) -> int:
        """One HTTP attempt; its status, or ``UpstreamFailure`` for a 5xx or no answer."""
        try:
            status = self._send_once_more_if_stale()
        except (OSError, http.client.HTTPException):
            self._close()
            self.connection_errors += 1
            raise UpstreamFailure(None)
        self.statuses[status] += 1
        if status >= 500:
            raise UpstreamFailure(status)
        return status

    def _send_once_more_if_stale(self) -> int:
        if self.conn is None:
            return self._exchange()
        try:
            return self._exchange()
        except STALE_CONNECTION_ERRORS:
            self._close()
        return self._exchange()

    def _exchange(self) -> int:
        peer = self.peer
        if self.conn is None:
            self.conn = http.client.HTTPConnection(
                peer.host, peer.port, timeout=peer.policy.request_timeout
            )
        self.conn.request("GET", peer.path, headers=dict(peer.headers))
        response = self.conn.getresponse()
        response.read()
        return response.status

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self._close()


class DirectPeer:
    """One process's breaker and its callers, calling ``GET url`` straight at the upstream."""

    def __init__(self, url: str, headers: Mapping[str, str], policy: PeerPolicy) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            msg = f"the peer calls plain http://host:port/path URLs, got {url!r}"
            raise ValueError(msg)
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.headers = dict(headers)
        self.policy = policy
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=policy.fail_max, reset_timeout=policy.reset_timeout
        )
        self._callers: list[_Caller] = []

    def caller(self) -> tuple[Callable[[], str], Callable[[], None]]:
        """A new caller's ``call`` (one logical call, its outcome code) and ``close``."""
        caller = _Caller(self)
        self._callers.append(caller)
        return caller.call, caller.close

    def upstream_figures(self) -> dict[str, object]:
        """What reached the upstream from this process: ``requests`` (answered or not),
        ``statuses`` by code and ``connection_errors``; read once every caller has stopped."""
        statuses: Counter[int] = Counter()
        errors = 0
        for caller in self._callers:
            statuses.update(caller.statuses)
            errors += caller.connection_errors
        return {
            "requests": sum(statuses.values()) + errors,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "connection_errors": errors,
        }
