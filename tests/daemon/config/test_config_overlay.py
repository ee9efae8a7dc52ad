"""A file over the embedded default: extends it table by table, [embedded_default] replace, one
pass over every problem, the credential files check-config looks at, and the TOML writer."""

from __future__ import annotations

import tomllib
from pathlib import Path

import attrs
import pytest

from claykiln.actors.gate import RatePolicy
from claykiln.daemon.config import (
    ConfigError,
    check_config,
    default_toml,
    effective_data,
    load_config,
)
from claykiln.daemon.config.toml_writer import dumps

BUILT_IN_OPS = {"push_row", "me", "start_routine", "poll_routine"}
NEW_OP = '[operations.ping]\nupstream = "clay"\nmethod = "GET"\npath = "/ping"\n'


def write(tmp_path: Path, text: str, name: str = "kiln.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str) -> object:
    return load_config(write(tmp_path, text), env={}, state_dir=tmp_path)


def problems(tmp_path: Path, text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_a_base_url_alone_keeps_the_defaults_auth_pacing_and_operations(tmp_path: Path) -> None:
    """[upstreams.clay] with only base_url keeps auth, rate, breaker, probe and every op."""
    config = load_config(
        write(tmp_path, '[upstreams.clay]\nbase_url = "http://127.0.0.1:8787"\n'), env={}
    )
    embedded = load_config(None, env={})
    clay, built_in = config.upstreams["clay"], embedded.upstreams["clay"]
    assert clay.base_url == "http://127.0.0.1:8787"
    assert clay == attrs.evolve(built_in, base_url="http://127.0.0.1:8787")
    assert clay.auth is not None and clay.rate is not None and clay.probe is not None
    assert set(config.operations) == BUILT_IN_OPS
    assert config.operations == embedded.operations
    assert (config.gates, config.breakers, config.lanes) == (
        embedded.gates,
        embedded.breakers,
        embedded.lanes,
    )


def test_a_new_operation_is_added_beside_the_built_in_ones(tmp_path: Path) -> None:
    """One [operations.NAME] in a file adds it; the built-in operations stay."""
    config = load_config(write(tmp_path, NEW_OP), env={})
    assert set(config.operations) == BUILT_IN_OPS | {"ping"}


def test_tables_merge_at_every_depth_and_values_replace(tmp_path: Path) -> None:
    """rate = { per_second = 5 } keeps the default burst; a lane key keeps the lane's others."""
    text = (
        '[upstreams.clay]\nrate = { per_second = 5 }\nheaders = { "x-team" = "data" }\n'
        '[lanes.bulk]\nconcurrency = 7\n[operations.me]\nlane = "normal"\n'
    )
    config = load_config(write(tmp_path, text), env={})
    clay = config.upstreams["clay"]
    assert clay.rate == RatePolicy(per_second=5, burst=20)
    assert clay.headers == {"user-agent": "claykiln/0.1", "x-team": "data"}
    assert (config.lanes["bulk"].concurrency, config.lanes["bulk"].queue) == (7, 1000)
    me = config.operations["me"]
    assert (me.lane, me.path, me.gate) == ("normal", "/public/v0/me", "clay-public")


def test_replace_takes_tables_from_the_file_alone(tmp_path: Path) -> None:
    """replace = ["upstreams.clay.rate"] turns pacing off; ["operations"] keeps only the file's."""
    text = '[embedded_default]\nreplace = ["upstreams.clay.rate", "operations"]\n' + NEW_OP
    config = load_config(write(tmp_path, text), env={})
    assert config.upstreams["clay"].rate is None
    assert set(config.operations) == {"ping"}
    assert config.upstreams["clay"].probe is None  # its operation "me" is gone: no probe
    assert effective_data(tmp_path / "kiln.toml").replace == ("upstreams.clay.rate", "operations")


def test_the_old_name_of_a_key_replaces_the_defaults_new_one(tmp_path: Path) -> None:
    """A file's idempotent = true on push_row wins over the default's idempotency_header."""
    config = load_config(write(tmp_path, "[operations.push_row]\nidempotent = true\n"), env={})
    assert config.operations["push_row"].idempotent is True


def test_replace_names_only_tables_of_the_embedded_default(tmp_path: Path) -> None:
    """A path the default lacks, a non-list and an unknown key are reported, with a suggestion."""
    found = problems(tmp_path, '[embedded_default]\nreplace = ["operations.mee", "lanes"]\n')
    assert found[0] == (
        'embedded_default.replace[0] = "operations.mee": not a table of the embedded default; '
        'did you mean "operations.me"? (replace drops the default\'s table at that path; '
        "tables the default lacks need no replacing)"
    )
    found = problems(tmp_path, '[embedded_default]\nreplace = "operations"\nreplaces = 1\n')
    assert found[0].startswith('embedded_default.replace = "operations": must be a list of')
    assert found[1] == "unknown key embedded_default.replaces; did you mean replace?"


def test_the_embedded_daemon_section_repeats_the_key_defaults(tmp_path: Path) -> None:
    """[daemon] is not merged: a file without it gets what the embedded default's [daemon] says."""
    env = {"STATE_DIRECTORY": str(tmp_path)}
    assert load_config(write(tmp_path, ""), env=env).daemon == load_config(None, env=env).daemon


def test_every_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    """Cross-field problems come with the others, not after they are fixed."""
    text = (
        '[daemon.storage]\nmap_size = "1GiB"\nmax_map_size = "64MiB"\nsync = 3\n'
        '[upstreams.clay]\nretry = { attempts = 0, base = "1s", cap = "10ms" }\n'
        '[operations.ping]\nupstream = "clay"\nmethod = "GET"\npath = "/p"\nlane = "nope"\n'
        '[upstreams.other]\nbase_url = "http://x"\nprobe = { operation = "ping" }\n'
    )
    assert problems(tmp_path, text) == (
        "daemon.storage.sync = 3: must be true or false",
        'daemon.storage.max_map_size = "64MiB": must be at least map_size (1GiB)',
        "upstreams.clay.retry.attempts = 0: must be an integer >= 1, e.g. 3",
        'upstreams.clay.retry.cap = "10ms": must be at least retry.base (1s)',
        'operations.ping.lane = "nope": unknown lane; defined: bulk, critical, normal',
    )


def test_check_config_warns_about_missing_credentials_and_fails_unusable_ones(
    tmp_path: Path,
) -> None:
    """A missing credential file is a warning naming the file and key; a directory in its place
    is a problem, reported with the file's other problems."""
    creds = tmp_path / "creds"
    creds.mkdir()
    text = f'[daemon]\ncredentials_dir = "{creds}"\nstate_dir = "{tmp_path}"\n'
    found = check_config(write(tmp_path, text), env={})
    assert found.config is not None and found.problems == ()
    assert len(found.warnings) == 2
    assert found.warnings[0].startswith(
        f"credential clay-api-key (upstreams.clay.auth): {creds}/clay-api-key does not exist; "
    )
    assert "LoadCredential= fills from /etc/claykiln/credentials/clay-api-key" in found.warnings[0]
    assert found.warnings[1].startswith("credential clay-webhook-token (operations.push_row.auth)")
    (creds / "clay-api-key").write_text("k\n")
    (creds / "clay-webhook-token").mkdir()
    found = check_config(write(tmp_path, text + "grace_period = -1\n"), env={})
    assert found.config is None and found.warnings == ()
    assert found.problems[0].startswith("daemon.grace_period = -1: must be a duration")
    assert found.problems[1].startswith(
        f"credential clay-webhook-token (operations.push_row.auth): cannot read credential "
        f"'clay-webhook-token' from {creds}/clay-webhook-token"
    )
    assert found.problems[1].endswith("the daemon would not start")
    assert "invalid config" in found.headline and "2 problems" in found.headline


def test_check_config_under_systemd_names_no_other_directory(tmp_path: Path) -> None:
    """With $CREDENTIALS_DIRECTORY set, a missing file's warning does not point elsewhere."""
    found = check_config(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert len(found.warnings) == 2
    assert "LoadCredential" not in found.warnings[0]


def test_the_toml_writer_round_trips_the_embedded_default() -> None:
    """dumps() of default.toml's data reads back equal, with headers two tables deep."""
    data = tomllib.loads(default_toml())
    text = dumps(data)
    assert tomllib.loads(text) == data
    assert "[upstreams.clay]\n" in text and "[daemon.limits]\n" in text
    assert "rate = { per_second = 10, burst = 20 }" in text
    odd = {"a": {"key with space": "tab\tand\x7f", "n": [1, 2.5, True], "t": {}}}
    assert tomllib.loads(dumps(odd)) == odd
    with pytest.raises(ValueError, match="finite"):
        dumps({"x": float("nan")})
