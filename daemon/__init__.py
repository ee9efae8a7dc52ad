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

from claykiln.daemon import client

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ hands the names out
    from claykiln.daemon.client import *  # noqa: F403
    from claykiln.daemon.client._errors import *  # noqa: F403

__all__ = client.__all__


def __getattr__(name: str) -> Any:
    """The client library's public names (``TrioClient`` / ``AsyncioClient`` load on access)."""
    if name in client.__all__:
        return getattr(client, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
