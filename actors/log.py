"""The one way code in daemon/, actors/ and storage/ gets a logger and emits an alert.

- ``get_logger(name)``: every line carries ``logger=<name>`` and follows whatever
  ``claykiln.daemon.logs.configure_logging`` set up later (also after a reconfiguration).
  ``structlog.get_logger(logger=...)`` collides with ``wrap_logger``'s own ``logger`` parameter
  and ``get_logger().bind(...)`` would freeze the configuration at import time; the lazy proxy
  structlog's own ``get_logger`` returns, given initial values, does neither. This is the only
  place that reaches into structlog's internals for it.
- ``alert(log, event, *, severity, **fields)``: an alert line, ``alert=true`` and ``severity``
  (critical | warning | info). docs/alerting.md is the contract for events, levels and fields;
  the configured log level never drops an alert.
"""

from __future__ import annotations

from typing import Any, Final, cast

from structlog._config import BoundLoggerLazyProxy
from structlog.typing import FilteringBoundLogger

__all__ = ["LEVELS", "SEVERITIES", "alert", "get_logger"]

SEVERITIES: Final = ("critical", "warning", "info")
LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose lines carry ``logger=name``; configuration is read at each use."""
    proxy = BoundLoggerLazyProxy(None, logger_factory_args=(), initial_values={"logger": name})
    return cast(FilteringBoundLogger, proxy)


def alert(
    log: FilteringBoundLogger,
    event: str,
    *,
    severity: str,
    level: str | None = None,
    **fields: Any,
) -> None:
    """Log ``event`` as an alert: ``alert=true`` and ``severity`` (critical | warning | info).

    The line's level is the severity's, unless ``level`` names another one (an ``error`` line
    whose consequence is only a ``warning``). Raises ValueError for an unknown severity or level
    (a programming error, caught by tests).
    """
    if severity not in SEVERITIES:
        msg = f"unknown alert severity {severity!r}: use one of {', '.join(SEVERITIES)}"
        raise ValueError(msg)
    method = severity if level is None else level
    if method not in LEVELS:
        msg = f"unknown log level {method!r}: use one of {', '.join(LEVELS)}"
        raise ValueError(msg)
    getattr(log, method)(event, alert=True, severity=severity, **fields)
