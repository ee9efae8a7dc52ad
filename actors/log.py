"""Named loggers for actors: every line carries ``logger=<name>`` and follows later configuration.

``structlog.get_logger(logger=...)`` collides with ``wrap_logger``'s own ``logger`` parameter,
and ``get_logger().bind(...)`` would freeze the configuration at import time; a lazy proxy with
initial values does neither (daemon/logs.get_logger does the same for the daemon side).
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["get_logger"]


def get_logger(name: str) -> Any:
    """A logger whose lines carry ``logger=name``; configuration is read at first use."""
    return structlog._config.BoundLoggerLazyProxy(None, initial_values={"logger": name})
