"""Rate gates in the config: [gates.NAME], an operation's gate, their defaults and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from claykiln.actors.gate import RatePolicy
from claykiln.daemon.config import ConfigError, describe, load_config
from claykiln.daemon.config.credentials import CredentialStore
from claykiln.daemon.wiring import operations, rate_policies

OP = '[operations.op]\nupstream = "clay"\nmethod = "POST"\npath = "/v1/x"\n'
UPSTREAM = '[upstreams.clay]\nbase_url = "https://a.b"\nrate = { per_second = 10, burst = 20 }\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kiln.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> tuple[str, ...]:
    """The problem lines load_config reports for a file holding ``text``."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, state_dir=tmp_path)
    for line in info.value.problems:
        assert f"  {line}" in str(info.value)
    return info.value.problems


def one_problem(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


def test_embedded_default_splits_the_webhook_gate_from_the_public_api_gate() -> None:
    """push_row is paced by the clay gate (10/s burst 20); the Public API calls by clay-public."""
    config = load_config(None, env={})
    assert config.gates == {"clay-public": None}
    assert {name: op.gate for name, op in config.operations.items()} == {
        "push_row": "clay",
        "me": "clay-public",
        "start_routine": "clay-public",
        "poll_routine": "clay-public",
    }
    assert config.gate_policy("clay") == RatePolicy(per_second=10.0, burst=20)
    assert config.gate_policy("clay-public") is None


def test_an_operation_without_gate_uses_its_upstreams_gate(tmp_path: Path) -> None:
    """gate defaults to the operation's upstream name."""
    config = load_config(write(tmp_path, OP), env={}, state_dir=tmp_path)
    assert config.operations["op"].gate == "clay"


def test_gates_section_round_trips_every_key(tmp_path: Path) -> None:
    """[gates.NAME] takes a rate's keys; an empty table means closures only; ops name them."""
    text = (
        '[embedded_default]\nreplace = ["gates", "operations"]\n'
        + UPSTREAM
        + '[gates.slow]\nper_second = 2.5\nburst = 3\nmargin = "50ms"\nmax_retry_after = "1m"\n'
        + "[gates.free]\n"
        + OP
        + 'gate = "slow"\n'
        + OP.replace("[operations.op]", "[operations.other]")
        + 'gate = "free"\n'
    )
    config = load_config(write(tmp_path, text), env={}, state_dir=tmp_path)
    slow = RatePolicy(per_second=2.5, burst=3, margin=0.05, max_retry_after=60.0)
    assert config.gates == {"slow": slow, "free": None}
    assert (config.operations["op"].gate, config.operations["other"].gate) == ("slow", "free")
    assert config.gate_policy("slow") == slow
    assert config.gate_policy("free") is None
    assert load_config(write(tmp_path, text), env={}, state_dir=tmp_path) == config


@pytest.mark.parametrize(("raw", "seconds"), [('"250ms"', 0.25), ("0.1", 0.1), ('"0s"', 0.0)])
def test_margin_is_a_duration_that_may_be_zero(tmp_path: Path, raw: str, seconds: float) -> None:
    """rate.margin takes a duration (or bare seconds) >= 0, in an upstream's rate and a gate."""
    text = (
        f'[upstreams.clay]\nbase_url = "https://a.b"\nrate = {{ margin = {raw} }}\n'
        f"[gates.g]\nmargin = {raw}\n" + OP
    )
    config = load_config(write(tmp_path, text), env={}, state_dir=tmp_path)
    assert config.upstreams["clay"].rate == RatePolicy(margin=seconds)
    assert config.gates["g"] == RatePolicy(margin=seconds)


def test_a_file_without_gates_inherits_the_embedded_ones(tmp_path: Path) -> None:
    """No [gates] section: the embedded default's gates apply (its operations need clay-public)."""
    config = load_config(write(tmp_path, UPSTREAM), env={}, state_dir=tmp_path)
    assert config.gates == {"clay-public": None}
    assert config.operations["me"].gate == "clay-public"


def test_a_gates_section_extends_the_embedded_one_or_replaces_it(tmp_path: Path) -> None:
    """[gates.mine] adds a gate to clay-public; replace = ["gates"] keeps only the file's."""
    config = load_config(write(tmp_path, "[gates.mine]\n" + OP), env={}, state_dir=tmp_path)
    assert config.gates == {"clay-public": None, "mine": None}
    text = '[embedded_default]\nreplace = ["gates", "operations"]\n[gates.mine]\n' + OP
    config = load_config(write(tmp_path, text), env={}, state_dir=tmp_path)
    assert config.gates == {"mine": None}


def test_unknown_gate_suggests_the_nearest_and_names_the_defined(tmp_path: Path) -> None:
    """An operation's gate must be an upstream or a [gates] name; did-you-mean like the rest."""
    assert one_problem(tmp_path, OP + 'gate = "clay-pub"\n') == (
        'operations.op.gate = "clay-pub": unknown gate; did you mean clay-public? '
        "(defined: clay, clay-public)"
    )
    assert one_problem(tmp_path, OP + 'gate = "zzz"\n') == (
        'operations.op.gate = "zzz": unknown gate; defined: clay, clay-public'
    )


def test_gate_must_be_a_string(tmp_path: Path) -> None:
    """gate is a name, not a table or a number."""
    assert one_problem(tmp_path, OP + "gate = 3\n") == (
        'operations.op.gate = 3: must be a non-empty string, e.g. "clay-public"'
    )


def test_inherited_operations_need_their_gate(tmp_path: Path) -> None:
    """Replacing [gates] without clay-public breaks the inherited Public API operations."""
    found = problems(tmp_path, '[embedded_default]\nreplace = ["gates"]\n[gates.mine]\n')
    assert found == tuple(
        f'operations.{op}.gate = "clay-public": unknown gate; defined: clay, mine '
        f"(operations.{op} comes from the embedded default; to drop it: [embedded_default] "
        f'replace = ["operations.{op}"])'
        for op in ("me", "start_routine", "poll_routine")
    )


def test_a_gate_may_not_be_named_like_an_upstream(tmp_path: Path) -> None:
    """[gates.clay] would be ambiguous with upstream clay's own gate (its rate)."""
    assert one_problem(tmp_path, "[gates.clay]\nburst = 5\n" + OP) == (
        "gates.clay: a gate may not be named like an upstream (upstream clay has its own gate, "
        "paced by upstreams.clay.rate); rename the gate"
    )


def test_an_upstream_named_like_an_inherited_gate_says_where_the_gate_came_from(
    tmp_path: Path,
) -> None:
    """The clash with an embedded default gate says where the gate came from."""
    text = UPSTREAM + '[upstreams.clay-public]\nbase_url = "https://b.c"\n'
    assert one_problem(tmp_path, text) == (
        "gates.clay-public: a gate may not be named like an upstream (upstream clay-public has "
        "its own gate, paced by upstreams.clay-public.rate); rename the gate (gates.clay-public "
        "comes from the embedded default; to drop it: [embedded_default] replace = "
        '["gates.clay-public"])'
    )


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("per_second = 0", "gates.g.per_second = 0: must be a number > 0, e.g. 10"),
        ("burst = 0", "gates.g.burst = 0: must be an integer >= 1, e.g. 20"),
        (
            'margin = "soon"',
            'gates.g.margin = "soon": must be a duration >= 0 like "150ms" (units ms, s, m, h, '
            "d; a bare number means seconds)",
        ),
        (
            "max_retry_after = 0",
            'gates.g.max_retry_after = 0: must be a duration > 0 like "10m" (units ms, s, m, h, '
            "d; a bare number means seconds)",
        ),
        ("burts = 5", "unknown key gates.g.burts; did you mean burst?"),
    ],
)
def test_gate_values_are_checked_like_a_rate(tmp_path: Path, keys: str, expected: str) -> None:
    """A [gates] table's keys have the same rules and messages as an upstream's rate."""
    assert one_problem(tmp_path, f"[gates.g]\n{keys}\n" + OP) == expected


def test_a_gate_must_be_a_table_with_a_safe_name(tmp_path: Path) -> None:
    """gates.NAME = value and a bad gate name are refused like other named tables."""
    assert (
        one_problem(tmp_path, "[gates]\ng = 3\n" + OP)
        == "gates.g = 3: must be a table, e.g. [gates.g]"
    )
    found = one_problem(tmp_path, '[gates."a b"]\n' + OP)
    assert found.startswith('gates."a b": the name must be 1-64 letters, digits')


def test_an_operation_may_name_an_invalid_gate_without_a_second_error(tmp_path: Path) -> None:
    """A gate with a bad value is still defined: only the bad value is reported."""
    found = one_problem(tmp_path, "[gates.g]\nburst = 0\n" + OP + 'gate = "g"\n')
    assert found == "gates.g.burst = 0: must be an integer >= 1, e.g. 20"


def test_describe_shows_the_gates_and_each_operations_gate() -> None:
    """check-config's summary lists the [gates] and the gate of every operation."""
    text = describe(load_config(None, env={}))
    assert "gates (1, besides one per upstream):" in text
    assert "clay-public: unpaced (Retry-After closures only)" in text
    assert "push_row: POST clay/v3/sources/webhook/{webhook_id}  lane bulk  gate clay  " in text
    assert "me: GET clay/public/v0/me  lane critical  gate clay-public  " in text


def test_wiring_paces_every_gate_that_has_a_rate(tmp_path: Path) -> None:
    """rate_policies: upstream rates by upstream name plus paced [gates]; unpaced ones absent."""
    text = UPSTREAM + "[gates.free]\n[gates.slow]\nper_second = 1\n" + OP + 'gate = "free"\n'
    config = load_config(write(tmp_path, text), env={}, state_dir=tmp_path)
    assert rate_policies(config) == {
        "clay": RatePolicy(per_second=10.0, burst=20),
        "slow": RatePolicy(per_second=1.0),
    }
    ops = operations(config, CredentialStore(tmp_path, {}))
    assert ops["op"].gate == "free"
    default_ops = operations(load_config(None, env={}), CredentialStore(tmp_path, {}))
    assert {name: op.gate for name, op in default_ops.items()} == {
        "push_row": "clay",
        "me": "clay-public",
        "start_routine": "clay-public",
        "poll_routine": "clay-public",
    }
