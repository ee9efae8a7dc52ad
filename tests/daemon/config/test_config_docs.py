"""Every key the config builder accepts is documented in docs/configuration.md, in its table's
section, and the embedded default teaches the ``[daemon]`` keys it leaves at their defaults.

The keys come from the builder itself, not from a list kept by hand: each ``Table`` remembers
the keys its builder asked for (``Table._ask``, what ``finish`` calls "allowed"), so building a
config that has every table records every key a table accepts, including the fields of the
settings classes ``build_policy`` reads by name.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from claykiln.daemon.config import default_toml, schema
from claykiln.daemon.config.build import build_config

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "configuration.md"

# Tables of named tables: their keys are names, and their entries are documented as NAME.
NAMED = frozenset({"upstreams", "lanes", "gates", "breakers", "operations"})

DAEMON_SUBTABLES = frozenset({"limits", "storage", "cache", "outbox", "health"})

# What the embedded default lacks, so every kind of table is built: a paced gate, an operation
# with a cache table (the default's empty [gates.clay-public] asks for no keys).
EXTRA = """
[embedded_default]
replace = []

[gates.paced]
per_second = 1

[operations.cached]
upstream = "clay"
method = "GET"
path = "/things/{thing_id}"
gate = "clay-public"
cache = { fresh_for = "1m" }
"""

# The section of configuration.md that documents each table (a heading and what follows up to
# the next heading of the same or a higher level). [breakers.NAME] takes the keys of an
# upstream's breaker and is documented there.
SECTIONS = {
    "daemon": "## `[daemon]`",
    "daemon.limits": "### `[daemon.limits]`",
    "daemon.storage": "### `[daemon.storage]`",
    "daemon.cache": "### `[daemon.cache]`",
    "daemon.outbox": "### `[daemon.outbox]`",
    "daemon.health": "### `[daemon.health]`",
    "embedded_default": "## Your file and the embedded default",
    "upstreams.NAME": "## `[upstreams.NAME]`",
    "breakers.NAME": "## `[upstreams.NAME]`",
    "lanes.NAME": "## `[lanes.NAME]`",
    "gates.NAME": "## `[gates.NAME]`",
    "operations.NAME": "## `[operations.NAME]`",
}


def accepted_keys() -> set[tuple[str, str]]:
    """(table, key) for every key the builder asks for; names of named tables read as NAME."""
    asked: set[tuple[str, str]] = set()
    original = schema.Table._ask

    def ask(table: schema.Table, key: str) -> None:
        asked.add((table.path, key))
        original(table, key)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schema.Table, "_ask", ask)
        build_config(
            tomllib.loads(EXTRA),
            source="test",
            base_dir=Path("/tmp"),
            embedded=tomllib.loads(default_toml()),
            socket=None,
            state_dir=None,
            env={},
        )
    out: set[tuple[str, str]] = set()
    for path, key in asked:
        parts = path.split(".") if path else []
        if not parts or (len(parts) == 1 and parts[0] in NAMED):
            continue  # the root's tables, or the names in a table of named tables
        if parts[0] in NAMED:
            parts[1] = "NAME"
        out.add((".".join(parts), key))
    return out


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of its level or above."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = len(lines)
    for n in range(start + 1, len(lines)):
        match = re.match(r"(#+) ", lines[n])
        if match and len(match.group(1)) <= level:
            end = n
            break
    return "\n".join(lines[start:end])


def code_text(text: str) -> str:
    """The code spans and fenced blocks of ``text``, joined: where a key is named as a key."""
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    prose = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.DOTALL)
    return "\n".join([*fenced, *re.findall(r"`([^`\n]+)`", prose)])


def test_the_builder_accepts_keys_in_every_documented_table() -> None:
    """The recording sees every kind of table, so the check below covers them all."""
    tables = {".".join(table.split(".")[:2]) for table, _ in accepted_keys()}
    assert {"daemon.limits", "daemon.health", "upstreams.NAME", "operations.NAME"} <= tables
    assert ("operations.NAME.cache", "max_age") in accepted_keys()
    assert ("gates.NAME", "per_second") in accepted_keys()


def test_every_accepted_config_key_is_in_configuration_md() -> None:
    """Each key the config builder accepts is named in code in its table's section of the doc."""
    text = DOC.read_text(encoding="utf-8")
    missing = []
    for table, key in sorted(accepted_keys()):
        parts = table.split(".")
        owner = ".".join(parts[:2]) if parts[0] in NAMED else table
        heading = SECTIONS.get(owner)
        assert heading is not None, f"no section of configuration.md is mapped for [{table}]"
        if not re.search(
            rf"(?<![\w-]){re.escape(key)}(?![\w-])", code_text(section(text, heading))
        ):
            missing.append(f"[{table}] {key} (section {heading!r})")
    assert missing == []


def test_the_embedded_default_shows_every_daemon_key() -> None:
    """`kiln config default` names every [daemon] key, set or commented out with its default."""
    text = default_toml()
    for table, key in sorted(accepted_keys()):
        if table.split(".")[0] != "daemon" or key in DAEMON_SUBTABLES:
            continue
        header = f"[{table}]"
        assert header in text, f"{header} is not in default.toml"
        body = text.split(header, 1)[1].split("\n[", 1)[0]
        assert re.search(rf"^#? ?{re.escape(key)} = ", body, flags=re.MULTILINE), (
            f"{table}.{key} is neither set nor shown commented out in default.toml"
        )
