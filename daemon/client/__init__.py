"""The client library apps import (wire protocol: docs/protocol.md)::

    from claykiln.daemon import Client, KilnError
    with Client() as kiln:
        kiln.call("push_row", path_params={"webhook_id": "w1"}, json={"name": "Ada"})

``Client`` is blocking; ``TrioClient`` and ``AsyncioClient`` pipeline many calls on one
connection. All three have the same typed methods (``_methods.py``), wait for a restarting
daemon and send a lost call again where that is safe (``_resend.py``). Importing this package
loads only the sync client, the protocol core and msgpack: ``TrioClient`` / ``AsyncioClient``
import trio / asyncio on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from claykiln.daemon.client import _errors
from claykiln.daemon.client._errors import *  # noqa: F403  (the exception tree, listed once there)
from claykiln.daemon.client._paths import SOCKET_ENV, client_socket_path
from claykiln.daemon.client._result import CallResult, new_idempotency_key
from claykiln.daemon.client._sync import Client

if TYPE_CHECKING:
    from claykiln.daemon.client._asyncio import AsyncioClient
    from claykiln.daemon.client._trio import TrioClient

__all__ = [
    "SOCKET_ENV",
    "AsyncioClient",
    "CallResult",
    "Client",
    "TrioClient",
    "client_socket_path",
    "new_idempotency_key",
]
__all__ += _errors.__all__

_LAZY = {
    "TrioClient": "claykiln.daemon.client._trio",
    "AsyncioClient": "claykiln.daemon.client._asyncio",
}


def __getattr__(name: str) -> Any:
    """Import the async flavors on first access, so sync users never load trio or asyncio."""
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
