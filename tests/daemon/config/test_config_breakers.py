"""Breakers in the config: the new breaker keys, [breakers.NAME], an operation's breaker, an
upstream's probe, the embedded default's split, and the policies the daemon wires from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from claykiln.actors.breaker_types import BreakerPolicy
from claykiln.daemon.config import ConfigError, load_config
from claykiln.daemon.config.credentials import CredentialStore
from claykiln.daemon.wiring import breaker_policies, operations

# A config of its own: nothing taken from the embedded default's sections.
OWN = '[embedded_default]\nreplace = ["upstreams", "gates", "breakers", "operations"]\n'
UPSTREAM = OWN + '[upstreams.clay]\nbase_url = "https://a.b"\n'
GET = '[operations.{name}]\nupstream = "{up}"\nmethod = "GET"\npath = "{path}"\n{extra}\n'


def op(name: str, *, up: str = "clay", path: str = "/v1/x", extra: str = "") -> str:
    return GET.format(name=name, up=up, path=path, extra=extra)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kiln.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str) -> object:
    return load_config(write(tmp_path, text), env={}, state_dir=tmp_path)


def problems(tmp_path: Path, text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_embedded_default_gives_the_webhook_its_own_breaker() -> None:
    """push_row reports to "clay-webhook", the Public API calls to "clay", which probes with me."""
    config = load_config(None, env={})
    keys = {name: config.breaker_key(o) for name, o in config.operations.items()}
    assert keys == {
        "push_row": "clay-webhook",
        "me": "clay",
        "start_routine": "clay",
        "poll_routine": "clay",
    }
    policies = breaker_policies(config)
    assert set(policies) == {"clay", "clay-webhook"}
    assert policies["clay"].probe_operation == "me"
    assert policies["clay-webhook"].probe_operation is None
    assert policies["clay-webhook"] == config.upstreams["clay"].breaker
    wired = operations(config, CredentialStore({}))
    assert {name: o.breaker_key for name, o in wired.items()} == keys


def test_every_new_breaker_key_is_read(tmp_path: Path) -> None:
    """The in-a-row counts and the open interval's keys land in the policy."""
    text = UPSTREAM + (
        "breaker = { consecutive_failures = 7, consecutive_connect_failures = 0, "
        'reset_timeout = "2s", reset_backoff = 3, max_reset_timeout = "5m", reset_jitter = 0.25, '
        'healthy_period = "0s" }\n'
    )
    config = load_config(write(tmp_path, text + op("x")), env={}, state_dir=tmp_path)
    b = config.upstreams["clay"].breaker
    assert (b.consecutive_failures, b.consecutive_connect_failures) == (7, 0)
    assert (b.reset_timeout, b.reset_backoff, b.max_reset_timeout) == (2.0, 3.0, 300.0)
    assert (b.reset_jitter, b.healthy_period) == (0.25, 0.0)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("reset_backoff = 0.5", "reset_backoff = 0.5: must be a number >= 1"),
        ("reset_jitter = 1", "reset_jitter = 1: must be a number between 0 and 0.99"),
        ("consecutive_failures = -1", "consecutive_failures = -1: must be an integer >= 0"),
        ('probe_operation = "me"', "unknown key upstreams.clay.breaker.probe_operation"),
    ],
)
def test_bad_breaker_keys_name_the_key_and_the_rule(
    tmp_path: Path, key: str, fragment: str
) -> None:
    """Out-of-range values and the daemon-set probe_operation are refused with the key path."""
    found = problems(tmp_path, UPSTREAM + f"breaker = {{ {key} }}\n" + op("x"))
    assert any(fragment in line for line in found), found


def test_a_named_breaker_takes_its_upstreams_policy_and_its_own_keys(tmp_path: Path) -> None:
    """[breakers.NAME] keys override the upstream's breaker; the keys it leaves out follow it."""
    text = (
        UPSTREAM
        + "breaker = { volume_threshold = 4, consecutive_failures = 9 }\n"
        + "[breakers.slow-lane]\nconsecutive_failures = 2\n"
        + op("a", extra='breaker = "slow-lane"')
        + op("b")
    )
    config = load_config(write(tmp_path, text), env={}, state_dir=tmp_path)
    named = config.breakers["slow-lane"]
    assert (named.volume_threshold, named.consecutive_failures) == (4, 2)
    assert config.breaker_key(config.operations["a"]) == "slow-lane"
    assert config.breaker_key(config.operations["b"]) == "clay"
    policies = breaker_policies(config)
    assert set(policies) == {"clay", "slow-lane"}


def test_an_unknown_breaker_name_lists_the_choices(tmp_path: Path) -> None:
    """breaker = "nope" names the key and what is allowed."""
    found = problems(tmp_path, UPSTREAM + "[breakers.b1]\n" + op("a", extra='breaker = "nope"'))
    assert found == (
        'operations.a.breaker = "nope": unknown breaker; use one of "upstream", "operation", "b1"',
    )


def test_a_breaker_may_not_take_an_upstreams_name(tmp_path: Path) -> None:
    """[breakers.clay] beside [upstreams.clay] is refused: the upstream has a breaker of its own."""
    found = problems(tmp_path, UPSTREAM + "[breakers.clay]\n" + op("a"))
    assert len(found) == 1 and found[0].startswith("breakers.clay: a breaker may not be named")


def test_a_named_breaker_watches_one_upstream(tmp_path: Path) -> None:
    """Operations of two upstreams may not share one named breaker."""
    text = (
        UPSTREAM
        + '[upstreams.other]\nbase_url = "https://c.d"\n[breakers.shared]\n'
        + op("a", extra='breaker = "shared"')
        + op("b", up="other", extra='breaker = "shared"')
    )
    found = problems(tmp_path, text)
    assert found == (
        "breakers.shared: named by operations of upstreams clay, other; a breaker watches one "
        "upstream: give each upstream's operations their own",
    )


def test_a_probe_goes_on_the_breaker_of_its_operation(tmp_path: Path) -> None:
    """probe = { operation = "ping" } marks the breaker "ping" reports to, and only that one."""
    text = (
        UPSTREAM
        + 'probe = { operation = "ping" }\n[breakers.writes]\n'
        + op("ping")
        + op("put", extra='breaker = "writes"')
    )
    config = load_config(write(tmp_path, text), env={}, state_dir=tmp_path)
    probe = config.upstreams["clay"].probe
    assert probe is not None and (probe.operation, probe.every) == ("ping", None)
    policies = breaker_policies(config)
    assert policies["clay"].probe_operation == "ping"
    assert policies["writes"].probe_operation is None


@pytest.mark.parametrize(
    ("probe", "ops", "fragment"),
    [
        ('"nope"', op("a"), 'probe.operation = "nope": unknown operation; use one of a'),
        (
            '"b"',
            '[upstreams.other]\nbase_url = "https://c.d"\n' + op("a") + op("b", up="other"),
            "the operation calls upstream other, not clay",
        ),
        (
            '"w"',
            '[operations.w]\nupstream = "clay"\nmethod = "POST"\npath = "/w"\n',
            "must be safe to repeat",
        ),
        ('"g"', op("g", path="/runs/{run_id}"), "a probe takes no parameters"),
    ],
)
def test_a_bad_probe_says_why(tmp_path: Path, probe: str, ops: str, fragment: str) -> None:
    """A probe must name an operation of its upstream, safe to repeat, without parameters."""
    found = problems(tmp_path, UPSTREAM + f"probe = {{ operation = {probe} }}\n" + ops)
    assert len(found) == 1 and fragment in found[0], found


def test_the_embedded_probe_is_dropped_for_a_file_without_its_operation(tmp_path: Path) -> None:
    """A file that replaces [operations] but keeps the embedded [upstreams]: no probe, no error."""
    text = '[embedded_default]\nreplace = ["operations"]\n' + op("x")
    config = load_config(write(tmp_path, text), env={}, state_dir=tmp_path)
    assert config.upstreams["clay"].probe is None
    assert breaker_policies(config)["clay"].probe_operation is None


def test_the_seeds_fixed_interval_is_a_config_away(tmp_path: Path) -> None:
    """reset_timeout 30 s, reset_backoff 1, no jitter, in-a-row signals off: the old breaker."""
    text = UPSTREAM + (
        'breaker = { reset_timeout = "30s", reset_backoff = 1, reset_jitter = 0, '
        "consecutive_failures = 0, consecutive_connect_failures = 0 }\n"
    )
    config = load_config(write(tmp_path, text + op("x")), env={}, state_dir=tmp_path)
    policy: BreakerPolicy = config.upstreams["clay"].breaker
    assert [policy.open_interval(n, 0.5) for n in range(4)] == [30.0] * 4
