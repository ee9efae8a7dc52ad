"""A config file over the embedded default (CONTRACT: docs/configuration.md, "Your file and the
embedded default").

A file *extends* the embedded default (``default.toml``): each table of the file is merged key
by key into the default's table at the same path, at every depth, and any other value replaces
the default's. So ``[upstreams.clay]`` with only ``base_url`` keeps the default's auth, rate,
breaker, probe and the rest; ``rate = { per_second = 5 }`` keeps the default's burst; a new
``[operations.NAME]`` is added beside the built-in operations. ``[daemon]`` is the exception:
it is read as the file has it, its keys defaulting to the values the embedded default's
``[daemon]`` repeats.

The explicit way to replace: ``[embedded_default] replace = [PATH, ...]`` lists tables of the
embedded default (``"operations"``, ``"upstreams.clay"``, ``"upstreams.clay.rate"``) to take
from the file alone: the default's table at each path is dropped before the merge, so a listed
table the file does not define is gone (``"upstreams.clay.rate"`` alone turns pacing off).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

from claykiln.daemon.config.schema import Invalid, Parser, Problems, Table

__all__ = ["REPLACE_TABLE", "Overlay", "overlay"]

# The file's table that lists what to replace (read here, not by the section builders).
REPLACE_TABLE: Final = "embedded_default"
# The one section a file does not merge: its keys' defaults are the embedded default's values.
STANDALONE: Final = "daemon"
# Keys still read under an old name: a file's old name replaces the default's new one.
OLD_NAMES: Final = {"idempotent": "idempotency_header"}
TablePath = tuple[str, ...]


@attrs.frozen
class Overlay:
    """The merged data and where its tables came from.

    ``data``: the embedded default with the file merged in (``REPLACE_TABLE`` taken out).
    ``replace``: the valid paths of ``[embedded_default] replace``, as written.
    ``file_tables``: every table path the file itself has (``("operations", "me")``).
    """

    data: dict[str, Any]
    replace: tuple[str, ...] = ()
    file_tables: frozenset[TablePath] = frozenset()

    def inherited(self, *path: str) -> bool:
        """Whether the table at ``path`` comes from the embedded default alone (the file has no
        table there)."""
        return path not in self.file_tables

    def note(self, *path: str) -> str:
        """`` (X comes from the embedded default ...)`` for a message about an inherited table
        at ``path``, else ""."""
        if not self.inherited(*path):
            return ""
        dotted = ".".join(path)
        return (
            f" ({dotted} comes from the embedded default; to drop it: "
            f"[{REPLACE_TABLE}] replace = [{json.dumps(dotted)}])"
        )


def overlay(embedded: Mapping[str, Any], data: Mapping[str, Any], problems: Problems) -> Overlay:
    """``data`` (a parsed file) over ``embedded``; problems of ``[embedded_default]`` are
    reported to ``problems`` (an invalid entry replaces nothing)."""
    replace = _replace_paths(data, embedded, problems)
    base: dict[str, Any] = _copy(embedded)
    for path in replace:
        _drop(base, path)
    own = {k: v for k, v in data.items() if k != REPLACE_TABLE}
    merged = _merge(base, own)
    # [daemon] stands alone: its keys default to the values the embedded default repeats, and a
    # problem with one names only what the file wrote.
    merged.pop(STANDALONE, None)
    if STANDALONE in own:
        merged[STANDALONE] = own[STANDALONE]
    return Overlay(
        data=merged,
        replace=tuple(".".join(p) for p in replace),
        file_tables=frozenset(_table_paths(own)),
    )


def _replace_paths(
    data: Mapping[str, Any], embedded: Mapping[str, Any], problems: Problems
) -> list[TablePath]:
    if REPLACE_TABLE not in data:
        return []
    root = Table(data, "", problems)
    t = root.table(REPLACE_TABLE)
    if t is None:
        return []
    rule = (
        "must be a list of tables of the embedded default to take from this file alone, "
        'e.g. ["operations", "upstreams.clay.rate"] (see `kiln config default`)'
    )
    raw: list[str] = t.get("replace", _string_list(rule), [])
    t.finish()
    known = {".".join(p): p for p in _table_paths(embedded)}
    out: list[TablePath] = []
    for i, dotted in enumerate(raw):
        if dotted in known:
            out.append(known[dotted])
            continue
        near = difflib.get_close_matches(dotted, list(known), n=1, cutoff=0.6)
        hint = f"; did you mean {json.dumps(near[0])}?" if near else ""
        problems.add(
            f"{REPLACE_TABLE}.replace[{i}] = {json.dumps(dotted)}: not a table of the embedded "
            f"default{hint} (replace drops the default's table at that path; tables the default "
            "lacks need no replacing)"
        )
    return out


def _string_list(rule: str) -> Parser[list[str]]:
    def parse(raw: object) -> list[str]:
        if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
            raise Invalid(rule)
        return list(raw)

    return parse


def _table_paths(data: Mapping[str, Any], prefix: TablePath = ()) -> Iterator[TablePath]:
    """Every path under which ``data`` holds a table (depth first)."""
    for key, value in data.items():
        if isinstance(value, Mapping):
            path = (*prefix, key)
            yield path
            yield from _table_paths(value, path)


def _copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _drop(data: dict[str, Any], path: TablePath) -> None:
    *parents, last = path
    for key in parents:
        data = data[key]
    data.pop(last, None)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: tables key by key, at every depth; other values replace."""
    out = dict(base)
    for old, current in OLD_NAMES.items():
        if old in over and current not in over:
            out.pop(current, None)
    for key, value in over.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = _merge(below, value)
        else:
            out[key] = value
    return out
