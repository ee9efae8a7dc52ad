"""Serving a Simulator over HTTP/1.1 on a TCP port, with hypercorn's protocol stack under trio.

We run hypercorn's per-connection ``TCPServer`` from our own accept loop instead of
``hypercorn.trio.serve`` for two reasons: each connection's ``trio.SocketStream`` must be
reachable from the app so reset faults can send a real TCP RST (``_abort``), and we bind the
socket ourselves, so port 0 works and the real port is reported. Access logging is off.

On cancellation every connection handler is cancelled: hung and delayed requests are
released, open connections closed; nothing outlives ``serve_simulator``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, cast

import attrs
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from claykiln.daemon.simulator._abort import CURRENT_STREAM
from claykiln.daemon.simulator._app import SimulatorApp
from claykiln.daemon.simulator._model import SimSettings
from claykiln.daemon.simulator._simulator import Simulator

__all__ = ["RunningSimulator", "open_simulator", "serve_simulator"]

LISTEN_BACKLOG = 1024


class _StreamTrackingTCPServer(TCPServer):  # type: ignore[misc]
    """hypercorn's connection handler, with the stream published to the request tasks."""

    async def run(self) -> None:
        stream = self.stream
        CURRENT_STREAM.set(stream if isinstance(stream, trio.SocketStream) else None)
        await super().run()


def _hypercorn_config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75.0
    return config


async def serve_simulator(
    sim: Simulator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``sim`` on ``host:port`` until cancelled; ``task_status.started(bound_port)``.

    ``host`` should be a literal address (only the first address a name resolves to is served).

    Use with ``nursery.start(partial(serve_simulator, sim, port=0))``. Raises OSError if the
    address cannot be bound. Cancellation closes the listener and every connection.
    """
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=LISTEN_BACKLOG)
    # A name like "localhost" can yield one listener per address, each on its own port when
    # port is 0; serve only the first so the reported port is the one that answers.
    for extra in listeners[1:]:
        await extra.aclose()
    listeners = listeners[:1]
    bound_port: int = listeners[0].socket.getsockname()[1]
    config = _hypercorn_config()
    app = ASGIWrapper(cast(Any, SimulatorApp(sim)))
    handler = partial(
        _StreamTrackingTCPServer, app, config, WorkerContext(None), ConnectionState({})
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, handler, listeners))
        task_status.started(bound_port)


@attrs.frozen
class RunningSimulator:
    """A simulator being served: ``sim`` to steer and inspect it, ``url`` to call it."""

    sim: Simulator
    host: str
    port: int

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def webhook_url(self, webhook_id: str) -> str:
        """The URL of a table webhook: ``{url}/v3/sources/webhook/{webhook_id}``."""
        return f"{self.url}/v3/sources/webhook/{webhook_id}"

    @property
    def public_url(self) -> str:
        """The public API base: ``{url}/public/v0``."""
        return f"{self.url}/public/v0"


@contextlib.asynccontextmanager
async def open_simulator(
    sim: Simulator | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    **settings: Any,
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator for the duration of the block.

    ``settings`` are ``SimSettings`` fields (e.g. ``webhook_rate=50``); pass either them or a
    ready ``sim``. On exit the server stops and every pending request is released.
    """
    if sim is None:
        sim = Simulator(SimSettings(**settings))
    elif settings:
        msg = "pass either sim= or SimSettings keyword arguments to open_simulator, not both"
        raise TypeError(msg)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_simulator, sim, host=host, port=port))
        try:
            yield RunningSimulator(sim, host, bound)
        finally:
            nursery.cancel_scope.cancel()
