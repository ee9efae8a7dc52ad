"""TOML text for config data (``kiln config show``): what ``tomllib`` reads back unchanged.

Enough TOML for a config: tables, strings, integers, floats, booleans and arrays of them. A
table at ``depth`` or less is written under a ``[header]`` (``[daemon.limits]``,
``[upstreams.clay]``); deeper tables inline (``rate = { per_second = 10, burst = 20 }``), the
way ``default.toml`` writes them. A table holding only tables gets no header of its own.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps(data: Mapping[str, Any], *, depth: int = 2) -> str:
    """``data`` as TOML text (tables down to ``depth`` under headers, deeper ones inline).

    Raises ``ValueError`` for a value TOML cannot hold here (None, NaN, another type).
    """
    lines: list[str] = []
    _table(lines, (), data, depth)
    return "\n".join(lines).strip("\n") + "\n"


def _table(lines: list[str], path: tuple[str, ...], data: Mapping[str, Any], depth: int) -> None:
    headed = {k: v for k, v in data.items() if isinstance(v, Mapping) and len(path) < depth}
    plain = {k: v for k, v in data.items() if k not in headed}
    if path and (plain or not headed):
        lines.extend(["", f"[{'.'.join(_key(p) for p in path)}]"])
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in plain.items())
    for key, value in headed.items():
        _table(lines, (*path, key), value, depth)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"TOML config values are finite numbers, not {value!r}"
            raise ValueError(msg)
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    msg = f"cannot write {type(value).__name__} {value!r} as TOML"
    raise ValueError(msg)
