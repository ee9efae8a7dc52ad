"""Loading configs: the embedded default, a full file, precedence, env defaults, helpers."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import attrs
import pytest

from claykiln.actors.breaker import BreakerPolicy
from claykiln.actors.gate import RatePolicy
from claykiln.actors.lanes import LanePolicy
from claykiln.actors.retry import RetryPolicy
from claykiln.actors.upstream import TimeoutClasses
from claykiln.daemon.config import (
    EMBEDDED_SOURCE,
    AuthConfig,
    ConfigError,
    KilnConfig,
    default_toml,
    describe,
    load_config,
    restart_required,
)
from claykiln.daemon.config.types import LimitsConfig
from claykiln.daemon.reload import pool_changes
from claykiln.daemon.rpc.dispatch import Dispatch, ServerCounters
from claykiln.daemon.start import server_limits

FULL = """
[embedded_default]
replace = ["upstreams", "gates", "breakers", "lanes", "operations"]

[daemon]
socket = "/run/test/kiln.sock"
state_dir = "/var/lib/test"
credentials_dir = "/etc/test/creds"
log_format = "json"
log_level = "DEBUG"
socket_mode = "0600"
allowed_uids = [1000, "root"]
allowed_gids = [100]
admin_uids = [0]
admin_gids = ["root"]
grace_period = "45s"
secrets = ["hunter2"]
[daemon.limits]
max_frame = "2MiB"
max_array_len = 500
max_map_len = 600
max_depth = 16
max_containers = 5000
max_connections = 32
max_connections_per_uid = 4
max_in_flight = 8
idle_timeout = "90s"
frame_timeout = "3s"
reply_timeout = "15s"
max_reply_backlog = "1MiB"
status_max_age = "0s"
busy_poll = "0.5ms"
[daemon.storage]
map_size = "128MiB"
max_map_size = "1GiB"
sync = false

[upstreams.clay]
base_url = "https://api.clay.com/"
auth = { header = "clay-api-key", credential = "clay-api-key" }
rate = { per_second = 2.5, burst = 5, max_retry_after = "2m" }
retry = { attempts = 5, base = "100ms", cap = "2s" }
timeouts = { connect = "2s", request = "20s", upload = "60s", long_poll = "10m" }
max_connections = 16
headers = { "user-agent" = "test/1" }
http_client = "httpx"
[upstreams.clay.breaker]
error_threshold = 0.25
volume_threshold = 4
window = "20s"
buckets = 20
reset_timeout = "1m"
half_open_probes = 2
slow_call_duration = "3s"
slow_call_threshold = 0.9
probe_timeout = "15s"

[upstreams.other]
base_url = "http://127.0.0.1:8080/api"

[lanes.critical]
concurrency = 3
queue = 7
max_wait = "1s"

[lanes.batch]
concurrency = 1
queue = 0
max_wait = "1m"

[operations.push_row]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{webhook_id}"
lane = "batch"
timeout = "upload"
on_failure = "error"
repeat_safe = true
idempotent = true
cacheable = true
breaker = "operation"
headers = { "x-extra" = "1" }
auth = { header = "x-clay-webhook-auth", credential = "clay-webhook-token" }

[operations.ping]
upstream = "other"
method = "get"
path = "/ping/{a}/{b}/{a}"
lane = "critical"
timeout = "45s"
"""


def write(tmp_path: Path, text: str, name: str = "kiln.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_embedded_default_has_the_clay_operations() -> None:
    """No path loads the embedded default: upstream clay and its four operations."""
    config = load_config(None, env={})
    assert config.source == EMBEDDED_SOURCE
    assert set(config.operations) == {"push_row", "me", "start_routine", "poll_routine"}
    push = config.operations["push_row"]
    assert (push.method, push.path, push.lane) == (
        "POST",
        "/v3/sources/webhook/{webhook_id}",
        "bulk",
    )
    assert push.path_params == ("webhook_id",)
    assert push.auth == AuthConfig(header="x-clay-webhook-auth", credential="clay-webhook-token")
    assert not push.repeat_safe
    me = config.operations["me"]
    assert (me.method, me.path, me.lane) == ("GET", "/public/v0/me", "critical")
    assert config.auth_for(me) == AuthConfig(header="clay-api-key", credential="clay-api-key")
    start = config.operations["start_routine"]
    assert (start.method, start.lane, start.repeat_safe) == ("POST", "normal", False)
    assert start.path == "/public/v0/routines/{routine_id}/runs"
    poll = config.operations["poll_routine"]
    assert (poll.method, poll.lane, poll.repeat_safe) == ("GET", "normal", True)
    assert poll.path_params == ("routine_id", "run_id")
    assert all(
        op.timeout == 30.0 and op.timeout_class == "request" for op in config.operations.values()
    )
    assert all(op.on_failure == "error" for op in config.operations.values())


def test_embedded_default_upstream_and_lanes() -> None:
    """The embedded clay upstream paces 10/s burst 20; lanes are critical/normal/bulk."""
    config = load_config(None, env={})
    clay = config.upstreams["clay"]
    assert clay.base_url == "https://api.clay.com"
    assert clay.rate == RatePolicy(per_second=10.0, burst=20)
    assert clay.breaker == BreakerPolicy(
        error_threshold=0.5,
        volume_threshold=10,
        window=10.0,
        consecutive_failures=5,
        consecutive_connect_failures=3,
        reset_timeout=0.5,
        reset_backoff=2.0,
        max_reset_timeout=60.0,
        reset_jitter=0.1,
        healthy_period=60.0,
    )
    assert config.breakers == {"clay-webhook": clay.breaker}
    assert clay.retry == RetryPolicy(attempts=3, base=0.25, cap=10.0)
    assert clay.timeouts == TimeoutClasses(connect=5.0, request=30.0, upload=120.0, long_poll=300.0)
    assert config.lanes == {
        "critical": LanePolicy(concurrency=10, queue=100, max_wait=5.0),
        "normal": LanePolicy(concurrency=5, queue=50, max_wait=5.0),
        "bulk": LanePolicy(concurrency=2, queue=1000, max_wait=30.0),
    }
    assert config.credential_names() == {"clay-api-key", "clay-webhook-token"}


def test_default_toml_is_the_shipped_resource() -> None:
    """default_toml() returns valid TOML whose operations are the embedded ones."""
    data = tomllib.loads(default_toml())
    assert set(data["operations"]) == set(load_config(None, env={}).operations)


def test_full_file_round_trips_every_key(tmp_path: Path) -> None:
    """Every key of a full file lands, parsed, in the matching field."""
    path = write(tmp_path, FULL)
    config = load_config(path, env={})
    d = config.daemon
    assert config.source == str(path)
    assert (d.socket, d.state_dir, d.credentials_dir) == (
        Path("/run/test/kiln.sock"),
        Path("/var/lib/test"),
        Path("/etc/test/creds"),
    )
    assert (d.log_format, d.log_level, d.socket_mode) == ("json", "debug", 0o600)
    assert (d.allowed_uids, d.allowed_gids, d.admin_uids, d.admin_gids) == (
        (1000, 0),
        (100,),
        (0,),
        (0,),
    )
    assert (d.grace_period, d.secrets) == (45.0, ("hunter2",))
    assert d.limits == LimitsConfig(
        max_frame=2 << 20,
        max_array_len=500,
        max_map_len=600,
        max_depth=16,
        max_containers=5000,
        max_connections=32,
        max_connections_per_uid=4,
        max_in_flight=8,
        idle_timeout=90.0,
        frame_timeout=3.0,
        reply_timeout=15.0,
        max_reply_backlog=1 << 20,
        status_max_age=0.0,
        busy_poll=0.0005,
    )
    assert attrs.astuple(d.storage) == (128 << 20, 1 << 30, False)
    clay = config.upstreams["clay"]
    assert clay.base_url == "https://api.clay.com"
    assert clay.rate == RatePolicy(per_second=2.5, burst=5, max_retry_after=120.0)
    assert clay.breaker == BreakerPolicy(
        error_threshold=0.25,
        volume_threshold=4,
        window=20.0,
        buckets=20,
        slow_call_duration=3.0,
        slow_call_threshold=0.9,
        reset_timeout=60.0,
        half_open_probes=2,
        probe_timeout=15.0,
    )
    assert clay.retry == RetryPolicy(attempts=5, base=0.1, cap=2.0)
    assert clay.timeouts == TimeoutClasses(connect=2.0, request=20.0, upload=60.0, long_poll=600.0)
    assert (clay.max_connections, clay.headers) == (16, {"user-agent": "test/1"})
    assert clay.http_client == "httpx"
    other = config.upstreams["other"]
    assert other.http_client == "h11"
    assert other.base_url == "http://127.0.0.1:8080/api"
    assert (other.auth, other.rate, other.breaker) == (None, None, BreakerPolicy())
    assert config.lanes == {
        "critical": LanePolicy(concurrency=3, queue=7, max_wait=1.0),
        "batch": LanePolicy(concurrency=1, queue=0, max_wait=60.0),
    }
    push = config.operations["push_row"]
    assert (push.lane, push.timeout, push.timeout_class) == ("batch", 60.0, "upload")
    assert (push.repeat_safe, push.idempotent, push.cacheable, push.breaker) == (
        True,
        True,
        True,
        "operation",
    )
    assert push.headers == {"x-extra": "1"}
    ping = config.operations["ping"]
    assert (ping.method, ping.timeout, ping.timeout_class) == ("GET", 45.0, "custom")
    assert ping.path_params == ("a", "b")
    assert config.auth_for(ping) is None
    assert config.credential_names() == {"clay-api-key", "clay-webhook-token"}
    assert load_config(path, env={}) == config


def test_limits_reach_the_server_and_its_poller(tmp_path: Path) -> None:
    """``[daemon.limits]`` as the server gets it: ``busy_poll`` ends up in the shared poller."""
    config = load_config(write(tmp_path, FULL), env={})
    limits = server_limits(config)
    assert (limits.max_in_flight, limits.shared_answer_age, limits.busy_poll) == (8, 0.0, 0.0005)
    dispatch = Dispatch({}, limits, lambda _peer: False, ServerCounters())
    assert dispatch.poller.busy_poll == 0.0005
    assert server_limits(load_config(None, env={})).busy_poll == 0.0  # off by default


def test_cli_overrides_win_over_the_file(tmp_path: Path) -> None:
    """socket and state_dir arguments (CLI flags) replace the file's values."""
    path = write(tmp_path, FULL)
    config = load_config(path, socket=tmp_path / "s.sock", state_dir=tmp_path / "st", env={})
    assert config.daemon.socket == tmp_path / "s.sock"
    assert config.daemon.state_dir == tmp_path / "st"
    assert config.daemon.credentials_dir == Path("/etc/test/creds")


def test_overridden_state_dir_moves_the_paths_derived_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without socket/credentials_dir keys, both follow a --state-dir override."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    config = load_config(None, state_dir=tmp_path / "st", env={})
    assert config.daemon.socket == tmp_path / "st" / "kiln.sock"
    assert config.daemon.credentials_dir == tmp_path / "st" / "credentials"


def test_systemd_environment_sets_the_defaults(tmp_path: Path) -> None:
    """STATE_DIRECTORY, RUNTIME_DIRECTORY and CREDENTIALS_DIRECTORY give the default paths."""
    env = {
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "RUNTIME_DIRECTORY": str(tmp_path / "run"),
        "CREDENTIALS_DIRECTORY": str(tmp_path / "creds"),
    }
    d = load_config(None, env=env).daemon
    assert (d.state_dir, d.socket, d.credentials_dir) == (
        tmp_path / "state",
        tmp_path / "run" / "kiln.sock",
        tmp_path / "creds",
    )


def test_xdg_environment_sets_the_defaults_for_a_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a non-root user, XDG_STATE_HOME and XDG_RUNTIME_DIR give the default paths."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    env = {"XDG_STATE_HOME": str(tmp_path / "xs"), "XDG_RUNTIME_DIR": str(tmp_path / "xr")}
    d = load_config(None, env=env).daemon
    assert d.state_dir == tmp_path / "xs" / "claykiln"
    assert d.socket == tmp_path / "xr" / "claykiln" / "kiln.sock"
    assert d.credentials_dir == tmp_path / "xs" / "claykiln" / "credentials"


def test_root_without_systemd_uses_system_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root with no systemd variables: /var/lib/claykiln and /run/claykiln/kiln.sock."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    d = load_config(None, env={"XDG_STATE_HOME": "/ignored"}).daemon
    assert (d.state_dir, d.socket) == (Path("/var/lib/claykiln"), Path("/run/claykiln/kiln.sock"))


def test_file_keys_win_over_the_environment(tmp_path: Path) -> None:
    """Paths set in the file beat STATE_DIRECTORY and CREDENTIALS_DIRECTORY."""
    path = write(tmp_path, FULL)
    env = {"STATE_DIRECTORY": "/env/state", "CREDENTIALS_DIRECTORY": "/env/creds"}
    d = load_config(path, env=env).daemon
    assert (d.state_dir, d.credentials_dir) == (Path("/var/lib/test"), Path("/etc/test/creds"))


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """A relative state_dir or socket in a file is resolved against the file's directory."""
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", '[daemon]\nstate_dir = "state"\nsocket = "../run/k.sock"\n')
    d = load_config(path, env={}).daemon
    assert d.state_dir == tmp_path / "etc" / "state"
    assert d.socket == tmp_path / "etc" / ".." / "run" / "k.sock"


def test_sections_left_out_come_from_the_embedded_default(tmp_path: Path) -> None:
    """A daemon-only file keeps the embedded upstreams, gates, lanes and operations."""
    path = write(tmp_path, '[daemon]\nlog_level = "warning"\n')
    config = load_config(path, env={})
    default = load_config(None, env={})
    assert config.daemon.log_level == "warning"
    assert (config.upstreams, config.gates, config.lanes, config.operations) == (
        default.upstreams,
        default.gates,
        default.lanes,
        default.operations,
    )


def test_a_lane_named_like_a_builtin_keeps_its_other_values(tmp_path: Path) -> None:
    """[lanes.bulk] with only concurrency keeps bulk's queue and max_wait; new lanes are added."""
    ops = '[operations.a]\nupstream = "clay"\nmethod = "GET"\npath = "/a"\nlane = "bulk"\n'
    path = write(tmp_path, "[lanes.bulk]\nconcurrency = 4\n[lanes.extra]\nqueue = 3\n" + ops)
    config = load_config(path, env={}, state_dir=tmp_path)
    assert config.lanes == {
        "critical": LanePolicy(concurrency=10, queue=100, max_wait=5.0),
        "normal": LanePolicy(concurrency=5, queue=50, max_wait=5.0),
        "bulk": LanePolicy(concurrency=4, queue=1000, max_wait=30.0),
        "extra": LanePolicy(queue=3),
    }


def test_repeat_safe_defaults_by_http_method(tmp_path: Path) -> None:
    """Without repeat_safe, GET/PUT/DELETE/HEAD/OPTIONS are repeat-safe and POST/PATCH not."""
    ops = '[embedded_default]\nreplace = ["operations"]\n' + "".join(
        f'[operations.{m.lower()}]\nupstream = "clay"\nmethod = "{m}"\npath = "/x"\n'
        for m in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH")
    )
    config = load_config(write(tmp_path, ops), env={})
    safe = {name for name, op in config.operations.items() if op.repeat_safe}
    assert safe == {"get", "head", "options", "put", "delete"}
    assert {op.lane for op in config.operations.values()} == {"normal"}


def test_with_base_url_points_an_upstream_elsewhere() -> None:
    """with_base_url returns a copy aimed at a local simulator; the original is unchanged."""
    config = load_config(None, env={})
    local = config.with_base_url("clay", "http://127.0.0.1:8321/")
    assert local.upstreams["clay"].base_url == "http://127.0.0.1:8321"
    assert config.upstreams["clay"].base_url == "https://api.clay.com"
    assert local.operations == config.operations


def test_with_base_url_rejects_unknown_upstream_and_bad_url() -> None:
    """with_base_url raises ConfigError naming the upstream or the URL rule."""
    config = load_config(None, env={})
    with pytest.raises(ConfigError, match="unknown upstream 'nope'; defined upstreams: clay"):
        config.with_base_url("nope", "http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"upstreams\.clay\.base_url = 'ftp://x'.*http\(s\) URL"):
        config.with_base_url("clay", "ftp://x")


def test_restart_required_names_the_changed_restart_keys(tmp_path: Path) -> None:
    """Only socket/state_dir/socket_mode/log_format/limits/storage changes need a restart."""
    old = load_config(None, env={})
    reloadable = attrs.evolve(
        old, daemon=attrs.evolve(old.daemon, log_level="debug", grace_period=1.0), lanes={}
    )
    assert restart_required(old, reloadable) == ()
    new = load_config(write(tmp_path, FULL), env={})
    assert restart_required(old, new) == (
        "daemon.socket",
        "daemon.state_dir",
        "daemon.socket_mode",
        "daemon.log_format",
        "daemon.limits",
        "daemon.storage",
    )


def test_pool_changes_name_the_connection_settings_of_running_pools() -> None:
    """A reload cannot swap a running pool's HTTP client, size, timeouts, headers or URL."""
    old = load_config(None, env={})
    clay = old.upstreams["clay"]
    moved = attrs.evolve(clay, http_client="httpx", max_connections=8)
    new = attrs.evolve(old, upstreams={**old.upstreams, "clay": moved})
    assert pool_changes(old, new) == [
        "upstreams.clay.max_connections",
        "upstreams.clay.http_client",
    ]
    assert pool_changes(old, old) == []


def test_describe_summarizes_upstreams_lanes_and_operations() -> None:
    """describe() names every upstream, lane and operation with its key settings."""
    text = describe(load_config(None, env={}))
    assert "upstreams (1):" in text and "clay: https://api.clay.com" in text
    assert "rate 10/s burst 20" in text
    assert "lanes (3):" in text and "bulk: concurrency 2, queue 1000, max wait 30s" in text
    assert "operations (4):" in text
    assert "push_row: POST clay/v3/sources/webhook/{webhook_id}  lane bulk" in text
    assert "auth x-clay-webhook-auth" in text


def test_config_is_frozen() -> None:
    """A loaded config cannot be mutated in place (reload builds a new one)."""
    config = load_config(None, env={})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.source = "x"  # type: ignore[misc]
    assert isinstance(config, KilnConfig)


def test_secrets_are_not_in_the_repr() -> None:
    """daemon.secrets never shows up in a repr (which may be logged)."""
    config = load_config(None, env={})
    config = attrs.evolve(config, daemon=attrs.evolve(config.daemon, secrets=("hunter2",)))
    assert "hunter2" not in repr(config)


def test_the_documented_example_loads(tmp_path: Path) -> None:
    """The complete example in docs/configuration.md is a valid config."""
    docs = Path(__file__).parents[3] / "docs" / "configuration.md"
    example = docs.read_text().split("## A complete example")[1].split("```toml")[1]
    example = example.split("```")[0]
    # It must load on any host: no group it names may need to exist here.
    config = load_config(write(tmp_path, example), env={})
    assert set(config.operations) == {"push_row", "me"}
    assert (config.operations["push_row"].gate, config.operations["me"].gate) == (
        "clay",
        "clay-public",
    )
    assert config.gates == {"clay-public": None}
    assert config.daemon.allowed_gids == ()
    assert config.daemon.storage.max_map_size == 8 << 30
