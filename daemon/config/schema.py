"""Reading TOML tables with messages that name the key, the bad value and what is allowed.

Hand-written rather than cattrs: every problem is collected (not just the first), each line
names its full key path (``upstreams.clay.breaker.error_threshold``), the value as written and
the rule with an example, and unknown keys get a difflib suggestion. The allowed keys of a table
are exactly the keys its builder asked for, so a suggestion can never drift from the code.

A value parser is a callable ``(raw) -> value`` that raises :class:`Invalid` with a phrase
starting "must ..." (e.g. ``must be a number between 0 and 1, e.g. 0.5``).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import attrs
from attrs import AttrsInstance

from claykiln.daemon.config.units import UnitError, format_size, parse_duration, parse_size

__all__ = [
    "ConfigError",
    "Invalid",
    "Problems",
    "Table",
    "boolean",
    "build_policy",
    "check_base_url",
    "choice",
    "duration",
    "integer",
    "key_path",
    "number",
    "show",
    "size",
    "string",
]

T = TypeVar("T")
P = TypeVar("P", bound=AttrsInstance)
Parser = Callable[[object], T]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TIME_LIKE = re.compile(r"(timeout|duration|wait|window|after|delay|interval|ttl|period|age)$")
_MAX_SHOWN = 60


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one line per problem found.

    ``str(error)`` is a headline followed by every problem, one per line, so printing it tells
    the operator everything to fix in one pass.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)

    @classmethod
    def from_problems(cls, source: str, problems: Sequence[str]) -> ConfigError:
        """One error for all ``problems`` found in the config read from ``source``."""
        n = len(problems)
        head = f"invalid config {source} ({n} problem{'' if n == 1 else 's'}):"
        return cls("\n".join([head, *(f"  {p}" for p in problems)]), problems)


class Invalid(Exception):
    """Raised by a value parser; the message says what is allowed ("must be ...")."""


def key_path(parent: str, key: str) -> str:
    """``parent.key``, quoting ``key`` the way TOML would when it is not a bare key."""
    shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{parent}.{shown}" if parent else shown


def show(value: object) -> str:
    """A value as the operator wrote it (TOML-ish), shortened for a one-line message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 4] + '..."'
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        text = "[" + ", ".join(show(v) for v in value) + "]"
        return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 4] + "...]"
    return str(value)


class Problems:
    """Every problem found so far, in the order found."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def bad_value(self, path: str, value: object, why: str, *, sensitive: bool = False) -> None:
        """``path = value: why``; a sensitive value is shown only by its type."""
        shown = f"<{type(value).__name__} hidden>" if sensitive else show(value)
        self.add(f"{path} = {shown}: {why}")


class Table:
    """One TOML table being read: remembers which keys its builder asked for.

    ``finish()`` reports every key nobody asked for as unknown, with a suggestion.
    """

    def __init__(self, data: Mapping[str, Any], path: str, problems: Problems) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.known: list[str] = []
        self.invalid: set[str] = set()

    def _ask(self, key: str) -> None:
        if key not in self.known:
            self.known.append(key)

    def has(self, key: str) -> bool:
        self._ask(key)
        return key in self.data

    def get(self, key: str, parse: Parser[T], default: T, *, sensitive: bool = False) -> T:
        """The parsed value of ``key``; ``default`` when absent or invalid (then reported)."""
        self._ask(key)
        if key not in self.data:
            return default
        raw = self.data[key]
        try:
            return parse(raw)
        except Invalid as e:
            self.invalid.add(key)
            self.problems.bad_value(self.sub_path(key), raw, str(e), sensitive=sensitive)
            return default

    def require(self, key: str, parse: Parser[T], example: str) -> T | None:
        """Like :meth:`get` for a key that must be present; None (reported) when absent/bad."""
        if not self.has(key):
            self.invalid.add(key)
            self.problems.add(f"{self.sub_path(key)}: missing; add it, e.g. {key} = {example}")
            return None
        value: T | None = self.get(key, parse, None)
        return value

    def table(self, key: str) -> Table | None:
        """The sub-table ``key``, or None when absent or not a table (then reported)."""
        self._ask(key)
        if key not in self.data:
            return None
        raw = self.data[key]
        if not isinstance(raw, Mapping):
            self.invalid.add(key)
            why = f"must be a table, e.g. [{self.sub_path(key)}]"
            self.problems.bad_value(self.sub_path(key), raw, why)
            return None
        return Table(raw, self.sub_path(key), self.problems)

    def named_tables(self) -> Iterator[tuple[str, Table]]:
        """Each ``NAME = {table}`` entry of a table of named tables (upstreams, lanes, ...)."""
        for name, raw in self.data.items():
            self._ask(name)
            path = self.sub_path(name)
            if not isinstance(raw, Mapping):
                self.problems.bad_value(path, raw, f"must be a table, e.g. [{path}]")
            elif not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name):
                self.problems.add(
                    f"{path}: the name must be 1-64 letters, digits, '_', '-' or '.', "
                    "starting with a letter, digit or '_' (e.g. push_row)"
                )
            else:
                yield name, Table(raw, path, self.problems)

    def sub_path(self, key: str) -> str:
        return key_path(self.path, key)

    def finish(self) -> None:
        """Report every key of the table that no builder asked for."""
        for key in self.data:
            if key in self.known:
                continue
            near = difflib.get_close_matches(key, self.known, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]}?" if near else f"allowed: {', '.join(self.known)}"
            if not self.known:
                hint = "this table takes no keys"
            self.problems.add(f"unknown key {self.sub_path(key)}; {hint}")


# ---- value parsers -----------------------------------------------------------------------


def integer(minimum: int = 0, maximum: int | None = None, *, example: int) -> Parser[int]:
    """An integer in ``[minimum, maximum]`` (TOML ints only; 3.0 is not an integer)."""
    rule = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"

    def parse(raw: object) -> int:
        if (
            isinstance(raw, bool)
            or not isinstance(raw, int)
            or raw < minimum
            or (maximum is not None and raw > maximum)
        ):
            msg = f"must be an integer {rule}, e.g. {example}"
            raise Invalid(msg)
        return raw

    return parse


def number(
    low: float, high: float | None = None, *, low_open: bool = True, example: float
) -> Parser[float]:
    """A number (int or float) above ``low`` (or at it when not ``low_open``), at most ``high``."""
    if high is not None:
        rule = f"between {low:g} and {high:g}"
    else:
        rule = f"> {low:g}" if low_open else f">= {low:g}"

    def parse(raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            msg = f"must be a number {rule}, e.g. {example:g}"
            raise Invalid(msg)
        value = float(raw)
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            msg = f"must be a number {rule}, e.g. {example:g}"
            raise Invalid(msg)
        return value

    return parse


def duration(*, example: str, allow_zero: bool = False) -> Parser[float]:
    """A duration (see ``config.units``) in seconds, > 0 unless ``allow_zero``."""
    bound = ">= 0" if allow_zero else "> 0"
    rule = (
        f"must be a duration {bound} like {json.dumps(example)} "
        "(units ms, s, m, h, d; a bare number means seconds)"
    )

    def parse(raw: object) -> float:
        try:
            seconds = parse_duration(raw)
        except UnitError:
            if isinstance(raw, str) and re.fullmatch(r"\s*\d+(\.\d*)?\s*", raw):
                msg = f"needs a unit, e.g. {json.dumps(raw.strip() + 's')}; {rule}"
                raise Invalid(msg) from None
            raise Invalid(rule) from None
        if seconds == 0 and not allow_zero:
            raise Invalid(rule)
        return seconds

    return parse


def size(minimum: int = 1, *, example: str) -> Parser[int]:
    """A size (see :mod:`claykiln.daemon.config.units`) in bytes, at least ``minimum``."""
    rule = (
        f"must be a size of at least {format_size(minimum)} like {json.dumps(example)} "
        "(units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB; a bare number means bytes)"
    )

    def parse(raw: object) -> int:
        try:
            nbytes = parse_size(raw)
        except UnitError:
            raise Invalid(rule) from None
        if nbytes < minimum:
            raise Invalid(rule)
        return nbytes

    return parse


def boolean(raw: object) -> bool:
    """TOML ``true`` or ``false`` (not strings, not 0/1)."""
    if not isinstance(raw, bool):
        msg = "must be true or false"
        raise Invalid(msg)
    return raw


def string(*, example: str, pattern: str | None = None, rule: str = "") -> Parser[str]:
    """A non-empty string, optionally matching ``pattern`` (``rule`` explains the pattern)."""

    def parse(raw: object) -> str:
        if not isinstance(raw, str) or not raw or (pattern and not re.fullmatch(pattern, raw)):
            msg = f"must be a {rule or 'non-empty'} string, e.g. {json.dumps(example)}"
            raise Invalid(msg)
        return raw

    return parse


def choice(*options: str, fold_case: bool = True) -> Parser[str]:
    """One of ``options`` (compared case-insensitively when ``fold_case``); returns the option."""

    def parse(raw: object) -> str:
        if isinstance(raw, str):
            for option in options:
                if raw == option or (fold_case and raw.lower() == option.lower()):
                    return option
        msg = f"must be one of {', '.join(json.dumps(o) for o in options)}"
        raise Invalid(msg)

    return parse


def check_base_url(url: str) -> tuple[str | None, str]:
    """``(problem, normalized)``: problem is None for ``http(s)://host[:port][/prefix]``.

    No query, fragment or credentials; the normalized URL has no trailing slash.
    """
    rule = (
        'must be an http(s) URL with a host and no query or fragment, e.g. "https://api.clay.com"'
    )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        return rule, url
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return rule, url
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        return rule, url
    if parts.username is not None or parts.password is not None:
        return f"{rule} (put credentials in auth, not in the URL)", url
    if port == 0 or any(c.isspace() for c in url):
        return rule, url
    return None, url.rstrip("/")


# ---- building actor settings classes by keyword ------------------------------------------


def _rule_for_field(name: str, annotation: object) -> Parser[Any] | None:
    """A parser for a settings field nobody gave a rule for, chosen by its type annotation."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    text = str(text).replace(" ", "").replace("|None", "").replace("Optional[", "").rstrip("]")
    if text == "bool":
        return boolean
    if text == "int":
        return integer(0, example=1)
    if text == "float":
        if _TIME_LIKE.search(name):
            return duration(example="10s")
        return number(0, low_open=False, example=1)
    if text == "str":
        return string(example="...")
    return None


def build_policy(
    cls: type[P], table: Table | None, rules: Mapping[str, Parser[Any]], base: P | None = None
) -> P | None:
    """An instance of the attrs class ``cls``, built by keyword from the keys of ``table``.

    Every init field of ``cls`` is a key of the same name; ``rules`` gives the parser of the
    known fields, others get one from their type annotation (so fields added to the settings
    classes later are configurable at once). Absent keys take ``base``'s value, else the class
    default. Returns None when a value was invalid or the class's own validators refused it
    (all reported); ``base`` or a default instance when ``table`` is None.
    """
    if table is None:
        return base if base is not None else cls()
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if not field.init or field.name.startswith("_") or field.metadata.get("config") is False:
            continue  # private, or set by the daemon (metadata config=False), not by a key
        parse = rules.get(field.name) or _rule_for_field(field.name, field.type)
        if parse is None:
            continue
        if table.has(field.alias):
            value = table.get(field.alias, parse, None)
            if value is not None:
                kwargs[field.name] = value
    table.finish()
    if table.invalid:
        return None
    try:
        if base is not None:
            evolved: P = attrs.evolve(cast(Any, base), **kwargs)
            return evolved
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        table.problems.add(f"{table.path}: {e}")
        return None
