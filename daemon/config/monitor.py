"""The ``[daemon]`` keys of what watches the daemon: the stats tick of ``subscribe`` (``kiln
top``) and the Prometheus textfile (docs/configuration.md, ``[daemon]``).

- ``tick_interval`` (default 1 s, from 100 ms to 60 s): how often subscribers get a tick;
- ``metrics_textfile`` (default unset): a file the daemon rewrites atomically in the Prometheus
  text format, for node_exporter's textfile collector, which reads only names ending in
  ``.prom``;
- ``metrics_interval`` (default 5 s, from 1 s to 1 h): how often it is rewritten.

All three apply at a reload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from claykiln.daemon.config.schema import Invalid, Parser, duration

__all__ = [
    "METRICS_INTERVAL",
    "TICK_INTERVAL",
    "bounded_duration",
    "prom_path",
]

TICK_INTERVAL: Final = 1.0
METRICS_INTERVAL: Final = 5.0


def bounded_duration(low: float, high: float, *, example: str) -> Parser[float]:
    """A duration in seconds from ``low`` to ``high``."""
    inner = duration(example=example)

    def parse(raw: object) -> float:
        seconds = inner(raw)
        if not low <= seconds <= high:
            msg = f"must be from {low:g} s to {high:g} s, e.g. {example!r}"
            raise Invalid(msg)
        return seconds

    return parse


def prom_path(base_dir: Path) -> Parser[Path]:
    """An absolute path (a relative one is taken from ``base_dir``) whose name ends in
    ``.prom``."""

    def parse(raw: object) -> Path:
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            msg = 'must be a file path like "/var/lib/node_exporter/textfile/claykiln.prom"'
            raise Invalid(msg)
        path = Path(raw).expanduser()
        if path.suffix != ".prom":
            msg = (
                f"{raw!r} must end in .prom: node_exporter's textfile collector reads only "
                'those, e.g. "/var/lib/node_exporter/textfile/claykiln.prom"'
            )
            raise Invalid(msg)
        return path if path.is_absolute() else base_dir / path

    return parse
