"""claykiln: a per-host reliability daemon for calls to Clay and other HTTP APIs.

Apps import the client library from here (it lives in ``claykiln.daemon.client``)::

    from claykiln.daemon import Client, KilnError
    with Client() as kiln:
        kiln.call("push_row", path_params={"webhook_id": "w1"}, json={"name": "Ada"})

Importing this package loads only the sync client, the protocol core and msgpack; ``TrioClient``
and ``AsyncioClient`` import trio / asyncio on first access. The daemon's own rooms (``app``,
``rpc``, ``methods``, ``config``, ``cli``; the tools ``demo``, ``bench``, ``simulator``) are
described in docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from claykiln.daemon import client as _client
from claykiln.daemon.client import (
    SOCKET_ENV,
    BadRequest,
    BreakerOpen,
    Client,
    ConnectionLost,
    DaemonUnavailable,
    Forbidden,
    FrameTooLarge,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InternalError,
    KilnError,
    KilnTimeout,
    LaneFull,
    ProtocolViolation,
    RateLimited,
    ShuttingDown,
    StorageFull,
    UnknownMethod,
    UnknownOperation,
    UpstreamError,
    client_socket_path,
    error_from_wire,
)

if TYPE_CHECKING:
    from claykiln.daemon.client import AsyncioClient, TrioClient

__all__ = [
    "SOCKET_ENV",
    "AsyncioClient",
    "BadRequest",
    "BreakerOpen",
    "Client",
    "ConnectionLost",
    "DaemonUnavailable",
    "Forbidden",
    "FrameTooLarge",
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
    "TrioClient",
    "UnknownMethod",
    "UnknownOperation",
    "UpstreamError",
    "client_socket_path",
    "error_from_wire",
]


def __getattr__(name: str) -> Any:
    """``TrioClient`` / ``AsyncioClient`` load on first access (see the client package)."""
    return getattr(_client, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
