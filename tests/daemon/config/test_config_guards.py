"""An operation's idempotency and degradation keys: values, defaults, contradictions."""

from __future__ import annotations

from pathlib import Path

import pytest

from claykiln.actors.fallback import CacheBounds
from claykiln.actors.fallback_policy import CachePolicy
from claykiln.daemon.config import ConfigError, load_config
from claykiln.daemon.config.types import KilnConfig

OP = '[operations.op]\nupstream = "clay"\nmethod = "POST"\npath = "/v1/x"\n'


def load(tmp_path: Path, text: str) -> KilnConfig:
    path = tmp_path / "kiln.toml"
    path.write_text(text)
    return load_config(path, env={}, state_dir=tmp_path)


def problems(tmp_path: Path, text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return tuple(info.value.problems)


def test_the_embedded_defaults_name_a_mode_per_clay_operation(tmp_path: Path) -> None:
    """push_row derives its key, start_routine requires one, the reads keep no records."""
    ops = load_config(None, env={}, state_dir=tmp_path).operations
    modes = {name: op.idempotency for name, op in ops.items()}
    assert modes == {
        "push_row": "derive",
        "me": "off",
        "start_routine": "required",
        "poll_routine": "off",
    }
    assert ops["push_row"].idempotency_retention == 24 * 3600
    assert not any(op.idempotent or op.cacheable or op.key_field for op in ops.values())


def test_every_key_is_read(tmp_path: Path) -> None:
    """Mode, retention, header, key_field, cache ages, cache_key and fallback."""
    op = load(
        tmp_path,
        OP
        + 'idempotency = "required"\nidempotency_retention = "2h"\nidempotency_header = true\n'
        + 'key_field = "kiln_key"\ncache = { fresh_for = "30s", stale_for = "5m", max_age = "1h" }\n'
        + 'cache_key = "{tenant}"\non_failure = "fallback"\n',
    ).operations["op"]
    assert (op.idempotency, op.idempotency_retention, op.idempotent) == ("required", 7200.0, True)
    assert op.key_field == "kiln_key" and op.on_failure == "fallback" and op.cacheable
    assert op.cache == CachePolicy(
        fresh_for=30, stale_for=300, max_age=3600, key_template="{tenant}"
    )


def test_old_names_still_work(tmp_path: Path) -> None:
    """idempotent = true is idempotency_header; cacheable = true keeps answers with default ages."""
    op = load(tmp_path, OP + "idempotent = true\ncacheable = true\n").operations["op"]
    assert op.idempotent and op.cache == CachePolicy()


def test_the_cache_bounds(tmp_path: Path) -> None:
    """[daemon.cache] bounds the fallback cache by entries and bytes."""
    config = load(tmp_path, '[daemon.cache]\nmax_entries = 50\nmax_bytes = "1MiB"\n')
    assert config.daemon.cache == CacheBounds(max_entries=50, max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            'on_failure = "fallback"\n',
            'operations.op.on_failure = "fallback": answers come from the cache, which this '
            'operation does not keep; add cache = { fresh_for = "1m", stale_for = "10m", '
            'max_age = "24h" }',
        ),
        (
            'idempotency = "always"\n',
            'operations.op.idempotency = "always": must be one of "required", "derive", "off"',
        ),
        (
            "idempotent = true\nidempotency_header = false\n",
            "operations.op.idempotent: the old name of idempotency_header; keep only "
            "idempotency_header",
        ),
        (
            'cache = { fresh_for = "1h", stale_for = "1m" }\n',
            "operations.op.cache: cache ages must grow: fresh_for (3600s) <= stale_for (60s) "
            "<= max_age (86400s)",
        ),
        (
            "cacheable = false\ncache = {}\n",
            "operations.op.cacheable: false, but the operation has a cache table; drop one",
        ),
        (
            'cache_key = "{a}"\n',
            "operations.op.cache_key: the operation keeps no answers; add cache = { fresh_for = "
            '"1m", stale_for = "10m", max_age = "24h" } or drop cache_key',
        ),
        (
            'cacheable = true\ncache_key = "{a b}"\n',
            'operations.op.cache_key = "{a b}": {a b} is not a placeholder (an identifier in '
            'braces); must be a template of {placeholders} and text, e.g. "{routine_id}/{run_id}"',
        ),
        (
            'key_field = ""\n',
            'operations.op.key_field = "": must be the name of a column of the row '
            '(1-200 characters), e.g. "kiln_key"',
        ),
    ],
)
def test_contradictions_name_the_key_and_the_fix(tmp_path: Path, extra: str, expected: str) -> None:
    """Each bad or contradictory key is one problem line naming it and saying what to do."""
    assert problems(tmp_path, OP + extra) == (expected,)


def test_key_field_needs_a_row(tmp_path: Path) -> None:
    """A GET has no JSON row to stamp."""
    text = OP.replace('"POST"', '"GET"') + 'key_field = "kiln_key"\n'
    assert problems(tmp_path, text) == (
        "operations.op.key_field: GET sends no JSON row to write the key into; key_field needs "
        "one of PATCH, POST, PUT",
    )
