"""What ``call`` returns, and a helper to name a request with an idempotency key.

``CallResult`` is the wire map of a ``call`` result (docs/protocol.md), so ``result["status"]``
works as it always did, with the fields as attributes too: ``status``, ``headers``, ``body``,
``attempts``, ``duration_ms``; how the answer came about: ``replayed`` (the stored answer of a
completed key, nothing sent), ``coalesced`` (the answer of a concurrent call with the same key),
``fallback`` (the last good answer standing in for a failure, with its ``staleness`` --
``"fresh"``, ``"stale"`` or ``"very_stale"`` -- its ``age`` in seconds and the ``error`` that
caused it, a ``KilnError``); and ``idempotency_key`` (the key the call ran under, given or
derived). Keys a newer daemon adds stay readable as items.

``new_idempotency_key()`` makes a key for one request: keep it with the request (in the job,
the message, the row) and pass the same one to every retry of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from claykiln.daemon.client._errors import KilnError, error_from_wire

__all__ = ["CallResult", "new_idempotency_key"]


def new_idempotency_key(prefix: str = "") -> str:
    """A fresh key, ``prefix`` followed by 32 random hex digits (printable ASCII, as the daemon
    requires; ``prefix`` may name the kind of request, e.g. ``"order-17:"``).

    Raises ValueError when ``prefix`` would make the key invalid (not printable ASCII, or
    longer than 223 characters, leaving room for the random part within 255).
    """
    if len(prefix) > 223 or not all(" " <= c <= "~" for c in prefix):
        msg = "the prefix of an idempotency key must be printable ASCII, at most 223 characters"
        raise ValueError(msg)
    return prefix + uuid.uuid4().hex


class CallResult(dict[str, Any]):
    """The result of ``call``: a dict (the wire map) with its fields as attributes."""

    __slots__ = ()

    @property
    def status(self) -> int:
        return int(self.get("status", 0))

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.get("headers") or {})

    @property
    def body(self) -> Any:
        return self.get("body")

    @property
    def attempts(self) -> int:
        return int(self.get("attempts", 0))

    @property
    def duration_ms(self) -> float:
        return float(self.get("duration_ms", 0.0))

    @property
    def replayed(self) -> bool:
        """The stored answer of a completed idempotency key: nothing was sent this time."""
        return bool(self.get("replayed", False))

    @property
    def coalesced(self) -> bool:
        """The answer of a concurrent call with the same key, which this call waited for."""
        return bool(self.get("coalesced", False))

    @property
    def fallback(self) -> bool:
        """The last good answer, standing in for the failure in ``error``."""
        return bool(self.get("fallback", False))

    @property
    def staleness(self) -> str | None:
        """For a fallback: ``"fresh"``, ``"stale"`` or ``"very_stale"``; None otherwise."""
        value = self.get("staleness")
        return value if isinstance(value, str) else None

    @property
    def age(self) -> float | None:
        """For a fallback: seconds since the answer was stored; None otherwise."""
        value = self.get("age")
        return float(value) if isinstance(value, int | float) else None

    @property
    def error(self) -> KilnError | None:
        """For a fallback: the error that made the daemon answer from its cache."""
        value = self.get("error")
        return error_from_wire(value) if isinstance(value, Mapping) else None

    @property
    def idempotency_key(self) -> str | None:
        """The key the call ran under (given, or derived by the daemon); None without one."""
        value = self.get("idempotency_key")
        return value if isinstance(value, str) else None

    @property
    def credential_missing(self) -> dict[str, str] | None:
        """On a 401/403 answer of an operation whose credential file is missing: the file's
        ``credential`` name, ``header`` and ``path``; None otherwise."""
        value = self.get("credential_missing")
        return dict(value) if isinstance(value, Mapping) else None

    def __repr__(self) -> str:
        return f"CallResult({dict.__repr__(self)})"


def call_result(value: Any) -> Any:
    """A ``CallResult`` for a map (what ``call`` answers); anything else unchanged."""
    return CallResult(value) if isinstance(value, Mapping) else value
