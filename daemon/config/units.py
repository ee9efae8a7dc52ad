"""Durations and sizes as people write them in config files (CONTRACT: docs/configuration.md).

Durations: a number followed by a unit, ``ms``, ``s``, ``m``, ``h`` or ``d``, optionally several
in a row from largest to smallest: ``"250ms"``, ``"30s"``, ``"1.5s"``, ``"5m"``, ``"1h30m"``.
A bare int or float (not a string) is read as seconds; a bare numeric *string* (``"30"``) is
rejected because its unit is ambiguous. Parsed once, into float seconds.

Sizes: a number with an optional unit, binary ``B KiB MiB GiB TiB`` (powers of 1024) or decimal
``KB MB GB TB`` (powers of 1000), units case-insensitive: ``"512KiB"``, ``"64MiB"``,
``"1.5GiB"``, ``"1000"``; a bare int is bytes. Parsed once, into int bytes; the result must be a
whole number of bytes.

Both parsers reject negatives, NaN/infinity and booleans, and raise :class:`UnitError` (a
``ValueError``) whose message says what is allowed, ready to follow a key path.
"""

from __future__ import annotations

import math
import re
from typing import NoReturn

__all__ = ["UnitError", "format_duration", "format_size", "parse_duration", "parse_size"]

_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_ORDER = ("d", "h", "m", "s", "ms")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
DURATION_HELP = 'a duration like "250ms", "30s", "5m", "1h" or a number of seconds'
SIZE_HELP = 'a size like "512KiB", "64MiB", "4GiB" or a number of bytes'


class UnitError(ValueError):
    """A duration or size that does not parse; the message says what is allowed."""


def parse_duration(value: object) -> float:
    """Seconds (>= 0) from ``"250ms"``, ``"1h30m"``, ``30`` or ``1.5``; raises UnitError."""
    if isinstance(value, bool):
        msg = f"must be {DURATION_HELP}, not a boolean"
        raise UnitError(msg)
    if isinstance(value, int | float):
        return _non_negative(float(value), DURATION_HELP)
    if not isinstance(value, str):
        msg = f"must be {DURATION_HELP}"
        raise UnitError(msg)
    text = value.strip()
    if _looks_numeric(text):
        msg = f'needs a unit, e.g. "{text}s" (must be {DURATION_HELP})'
        raise UnitError(msg)
    total = 0.0
    pos = 0
    last_rank = -1
    for match in _DURATION_PART.finditer(text):
        rank = _DURATION_ORDER.index(match.group(2))
        if match.start() != pos or rank <= last_rank:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
        last_rank = rank
    if pos == 0 or pos != len(text):
        msg = f"must be {DURATION_HELP} (units d, h, m, s, ms, largest first)"
        raise UnitError(msg)
    return _non_negative(total, DURATION_HELP)


def parse_size(value: object) -> int:
    """Bytes (>= 0) from ``"64MiB"``, ``"1000"`` or ``1048576``; raises :class:`UnitError`."""
    if isinstance(value, bool):
        msg = f"must be {SIZE_HELP}, not a boolean"
        raise UnitError(msg)
    if isinstance(value, int):
        if value < 0:
            _negative(SIZE_HELP)
        return value
    if not isinstance(value, str):
        msg = f"must be {SIZE_HELP} (whole bytes)"
        raise UnitError(msg)
    match = _SIZE.fullmatch(value.strip())
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        msg = f"must be {SIZE_HELP} (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
        raise UnitError(msg)
    number = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not math.isfinite(number) or number != int(number):
        msg = f"must be a whole number of bytes ({SIZE_HELP})"
        raise UnitError(msg)
    return int(number)


def format_duration(seconds: float) -> str:
    """The shortest exact-enough spelling for humans: ``0.25 -> "250ms"``, ``300 -> "5m"``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.12g}s"
    return f"{seconds * 1000:.12g}ms"


def format_size(size: int) -> str:
    """``1048576 -> "1MiB"``; exact binary multiples get a unit, anything else stays bytes."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _non_negative(number: float, help_text: str) -> float:
    if math.isnan(number) or math.isinf(number):
        msg = f"must be {help_text}, not {number}"
        raise UnitError(msg)
    if number < 0:
        _negative(help_text)
    return number


def _negative(help_text: str) -> NoReturn:
    msg = f"must not be negative (must be {help_text})"
    raise UnitError(msg)
