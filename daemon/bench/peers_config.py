"""The daemon config ``kiln bench --scenario outage-peers`` measures: the embedded default.

``embedded_default_for(base_url, scale)`` is the embedded default config (``default.toml``, as
committed) with the ``clay`` upstream's ``base_url`` pointed at the simulator and JSON logs;
with ``scale != 1`` every duration under that upstream's ``breaker`` and ``retry`` tables is
multiplied by ``scale`` too, so a scaled-down run keeps the shape of the full one (a reset
timeout equal to one outage length, backoff short against it). Nothing else is changed, so the
figures are those of whatever breaker and retry defaults the daemon ships.

The config goes back out as TOML through ``dump_toml`` (tables; strings, numbers, booleans and
arrays of them): the standard library reads TOML but does not write it, and this is all the
embedded default uses.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["UPSTREAM", "dump_toml", "embedded_default_for", "scale_durations"]

UPSTREAM: Final = "clay"
SCALED_TABLES: Final = ("breaker", "retry")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def scale_durations(table: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """``table`` with every single-unit duration string (``"30s"``, ``"250ms"``) multiplied by
    ``scale`` and written in whole milliseconds (at least 1 ms); other values unchanged."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            out[key] = value
            continue
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]] * scale
        out[key] = f"{max(1, round(seconds * 1000))}ms"
    return out


def embedded_default_for(base_url: str, *, scale: float = 1.0) -> dict[str, Any]:
    """The embedded default as a dict, its ``clay`` upstream at ``base_url`` (module doc).

    Raises ``ValueError`` if the embedded default has no ``clay`` upstream any more."""
    from claykiln.daemon.config.load import default_toml  # the config package loads actors/

    config = tomllib.loads(default_toml())
    upstream = config.get("upstreams", {}).get(UPSTREAM)
    if not isinstance(upstream, dict):
        msg = f"the embedded default has no [upstreams.{UPSTREAM}]: update the outage-peers bench"
        raise ValueError(msg)
    upstream["base_url"] = base_url
    config.setdefault("daemon", {})["log_format"] = "json"
    if scale != 1.0:
        for name in SCALED_TABLES:
            if isinstance(upstream.get(name), dict):
                upstream[name] = scale_durations(upstream[name], scale)
    return config


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    msg = f"cannot write {type(value).__name__} {value!r} as TOML"
    raise TypeError(msg)


def dump_toml(config: Mapping[str, Any]) -> str:
    """``config`` as TOML that ``tomllib`` reads back equal: every table under its own
    ``[dotted.header]``, written even when empty (a present section replaces the default's)."""
    lines: list[str] = []

    def table(path: list[str], body: Mapping[str, Any]) -> None:
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        if path:
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in body.items() if k not in nested)
        lines.append("")
        for key, value in nested.items():
            table([*path, key], value)

    table([], config)
    return "\n".join(lines)
