"""Every way a config can be wrong says where (key path), what (the value) and what is allowed."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from claykiln.daemon.config import ConfigError, load_config
from claykiln.daemon.config.schema import Problems, Table, build_policy, number

OP = '[operations.op]\nupstream = "clay"\nmethod = "POST"\npath = "/v1/x"\n'


def problems(tmp_path: Path, text: str) -> tuple[str, ...]:
    """The problem lines load_config reports for a file holding ``text``."""
    path = tmp_path / "kiln.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, state_dir=tmp_path)
    assert str(info.value).startswith(f"invalid config {path} (")
    for line in info.value.problems:
        assert f"  {line}" in str(info.value)
    return info.value.problems


def one_problem(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    """A misspelt key is an error with a difflib suggestion."""
    found = one_problem(tmp_path, OP + 'lanes = "bulk"\n')
    assert found == "unknown key operations.op.lanes; did you mean lane?"


def test_unknown_key_without_a_near_match_lists_the_allowed(tmp_path: Path) -> None:
    """An unknown key with no close match lists the keys the table takes."""
    found = one_problem(tmp_path, "[daemon.storage]\ncompression = true\n")
    assert found == "unknown key daemon.storage.compression; allowed: map_size, max_map_size, sync"


def test_unknown_section_and_nested_policy_key(tmp_path: Path) -> None:
    """Unknown top-level sections and keys inside actor settings tables are caught too."""
    text = "[operation.x]\n[upstreams.clay]\nbase_url = 'https://a.b'\nbreaker = { windw = '1s' }\n"
    assert problems(tmp_path, text) == (
        "unknown key upstreams.clay.breaker.windw; did you mean window?",
        "unknown key operation; did you mean operations?",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[daemon.limits]\nmax_connections = "lots"\n',
            'daemon.limits.max_connections = "lots": must be an integer >= 1, e.g. 256',
        ),
        (
            "[daemon.limits]\nmax_in_flight = 2.0\n",
            "daemon.limits.max_in_flight = 2.0: must be an integer >= 1, e.g. 128",
        ),
        (
            '[daemon.storage]\nsync = "yes"\n',
            'daemon.storage.sync = "yes": must be true or false',
        ),
        (
            '[daemon]\nlimits = "big"\n',
            'daemon.limits = "big": must be a table, e.g. [daemon.limits]',
        ),
        (
            '[daemon]\nlog_level = "loud"\n',
            'daemon.log_level = "loud": must be one of "debug", "info", "warning", "error"',
        ),
        (
            '[daemon]\nlog_format = "xml"\n',
            'daemon.log_format = "xml": must be one of "auto", "json", "console"',
        ),
        (
            "[daemon]\nallowed_uids = [-1]\n",
            "daemon.allowed_uids = [-1]: must be a list of numeric user ids or user names, "
            "e.g. [1000]",
        ),
        (
            '[daemon]\nadmin_gids = ["no-such-group-kiln"]\n',
            'daemon.admin_gids = ["no-such-group-kiln"]: group "no-such-group-kiln" does not '
            "exist on this host; must be a list of numeric group ids or group names, e.g. [1000]",
        ),
        (
            OP + "repeat_safe = 1\n",
            "operations.op.repeat_safe = 1: must be true or false",
        ),
        (
            "[upstreams.clay]\nbase_url = 'https://a.b'\nretry = 3\n",
            "upstreams.clay.retry = 3: must be a table, e.g. [upstreams.clay.retry]",
        ),
        (
            "[upstreams.clay]\nbase_url = 'https://a.b'\nheaders = { 'user agent' = 'x' }\n",
            'upstreams.clay.headers = a table: "user agent" is not a valid header name; must be '
            'a table of header names to strings, e.g. { "user-agent" = "claykiln/0.1" }',
        ),
    ],
)
def test_wrong_types_name_the_key_value_and_rule(tmp_path: Path, text: str, expected: str) -> None:
    """A value of the wrong type or outside its choices is reported with the rule."""
    assert one_problem(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[daemon]\ngrace_period = "20"\n',
            'daemon.grace_period = "20": needs a unit, e.g. "20s"; must be a duration > 0 like '
            '"20s" (units ms, s, m, h, d; a bare number means seconds)',
        ),
        (
            '[daemon.limits]\nbusy_poll = "20ms"\n',
            'daemon.limits.busy_poll = "20ms": must be at most 10ms (0 turns busy polling off), '
            "e.g. '0.5ms'",
        ),
        (
            '[daemon.limits]\nbusy_poll = "-1ms"\n',
            'daemon.limits.busy_poll = "-1ms": must be a duration >= 0 like "0.5ms" '
            "(units ms, s, m, h, d; a bare number means seconds)",
        ),
        (
            '[daemon.limits]\nidle_timeout = "5 minutes"\n',
            'daemon.limits.idle_timeout = "5 minutes": must be a duration > 0 like "5m" '
            "(units ms, s, m, h, d; a bare number means seconds)",
        ),
        (
            '[lanes.normal]\nmax_wait = "0s"\n' + OP,
            'lanes.normal.max_wait = "0s": must be a duration > 0 like "5s" '
            "(units ms, s, m, h, d; a bare number means seconds)",
        ),
        (
            "[upstreams.clay]\nbase_url = 'https://a.b'\ntimeouts = { connect = -1 }\n",
            'upstreams.clay.timeouts.connect = -1: must be a duration > 0 like "30s" '
            "(units ms, s, m, h, d; a bare number means seconds)",
        ),
    ],
)
def test_bad_duration(tmp_path: Path, text: str, expected: str) -> None:
    """Durations without a unit, unparseable, zero or negative are refused with the syntax."""
    assert one_problem(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[daemon.limits]\nmax_frame = "1 MB?"\n',
            'daemon.limits.max_frame = "1 MB?": must be a size of at least 64B like "1MiB" '
            "(units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB; a bare number means bytes)",
        ),
        (
            '[daemon.storage]\nmap_size = "1KiB"\n',
            'daemon.storage.map_size = "1KiB": must be a size of at least 1MiB like "64MiB" '
            "(units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB; a bare number means bytes)",
        ),
        (
            '[daemon.storage]\nmap_size = "8GiB"\n',
            'daemon.storage.map_size = "8GiB": must be at most max_map_size (4GiB by default)',
        ),
        (
            '[daemon.storage]\nmap_size = "2GiB"\nmax_map_size = "1GiB"\n',
            'daemon.storage.max_map_size = "1GiB": must be at least map_size (2GiB)',
        ),
    ],
)
def test_bad_size(tmp_path: Path, text: str, expected: str) -> None:
    """Sizes that do not parse, are too small or contradict each other are refused."""
    assert one_problem(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            "breaker = { error_threshold = 1.5 }",
            "upstreams.clay.breaker.error_threshold = 1.5: must be a number between 0 and 1, "
            "e.g. 0.5",
        ),
        (
            "breaker = { slow_call_threshold = 0 }",
            "upstreams.clay.breaker.slow_call_threshold = 0: must be a number between 0 and 1, "
            "e.g. 0.8",
        ),
        (
            "breaker = { volume_threshold = 0 }",
            "upstreams.clay.breaker.volume_threshold = 0: must be an integer >= 1, e.g. 10",
        ),
        (
            "retry = { attempts = 0 }",
            "upstreams.clay.retry.attempts = 0: must be an integer >= 1, e.g. 3",
        ),
        (
            'retry = { base = "1s", cap = "100ms" }',
            'upstreams.clay.retry.cap = "100ms": must be at least retry.base (1s)',
        ),
        (
            "rate = { per_second = 0 }",
            "upstreams.clay.rate.per_second = 0: must be a number > 0, e.g. 10",
        ),
        (
            "rate = { burst = 0 }",
            "upstreams.clay.rate.burst = 0: must be an integer >= 1, e.g. 20",
        ),
        (
            "max_connections = 0",
            "upstreams.clay.max_connections = 0: must be an integer >= 1, e.g. 64",
        ),
        (
            'http_client = "curl"',
            'upstreams.clay.http_client = "curl": must be one of "h11", "httpx"',
        ),
    ],
)
def test_out_of_range_thresholds(tmp_path: Path, table: str, expected: str) -> None:
    """Thresholds, counts and rates outside their range are refused with the range."""
    text = f"[upstreams.clay]\nbase_url = 'https://a.b'\n{table}\n"
    assert one_problem(tmp_path, text) == expected


def test_limits_in_range(tmp_path: Path) -> None:
    """max_depth is bounded by what msgpack can decode."""
    found = one_problem(tmp_path, "[daemon.limits]\nmax_depth = 5000\n")
    assert found == "daemon.limits.max_depth = 5000: must be an integer between 1 and 1000, e.g. 32"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.clay.com",
        "https://",
        "api.clay.com",
        "https://api.clay.com/?x=1",
        "https://api.clay.com/#top",
        "https://api.clay.com:99999",
    ],
)
def test_bad_base_url(tmp_path: Path, url: str) -> None:
    """base_url must be http(s) with a host and no query or fragment."""
    found = one_problem(tmp_path, f"[upstreams.clay]\nbase_url = '{url}'\n")
    assert found == (
        f'upstreams.clay.base_url = "{url}": must be an http(s) URL with a host and no query '
        'or fragment, e.g. "https://api.clay.com"'
    )


def test_base_url_with_credentials_says_where_they_go(tmp_path: Path) -> None:
    """A user:password in base_url points at auth instead."""
    found = one_problem(tmp_path, "[upstreams.clay]\nbase_url = 'https://u:p@a.b'\n")
    assert found.endswith("(put credentials in auth, not in the URL)")


def test_missing_required_keys(tmp_path: Path) -> None:
    """base_url, and an operation's upstream/method/path, are required with an example."""
    text = "[upstreams.x]\n[operations.op]\nlane = 'bulk'\n"
    assert problems(tmp_path, text) == (
        'upstreams.x.base_url: missing; add it, e.g. base_url = "https://api.example.com"',
        'operations.op.upstream: missing; add it, e.g. upstream = "clay"',
        'operations.op.method: missing; add it, e.g. method = "POST"',
        'operations.op.path: missing; add it, e.g. path = "/v1/things/{thing_id}"',
    )


def test_unknown_upstream_and_lane_name_the_defined_ones(tmp_path: Path) -> None:
    """An operation's upstream and lane must exist; the message lists those that do."""
    text = OP.replace('"clay"', '"clai"') + 'lane = "fast"\n'
    assert problems(tmp_path, text) == (
        'operations.op.upstream = "clai": unknown upstream; did you mean clay? (defined: clay)',
        'operations.op.lane = "fast": unknown lane; defined: bulk, critical, normal',
    )


def test_default_lane_missing_from_custom_lanes(tmp_path: Path) -> None:
    """An operation without lane needs a lane named normal when [lanes] replaces the defaults."""
    own = '[embedded_default]\nreplace = ["lanes", "operations"]\n'
    found = one_problem(tmp_path, own + "[lanes.only]\n" + OP)
    assert found == (
        'operations.op.lane: not set, and the default lane "normal" is not defined; set lane '
        "to one of: only"
    )


def test_embedded_operations_that_no_longer_fit_say_why(tmp_path: Path) -> None:
    """Errors in operations inherited from the embedded default say where they came from."""
    own = '[embedded_default]\nreplace = ["upstreams"]\n'
    found = problems(tmp_path, own + "[upstreams.other]\nbase_url = 'https://a.b'\n")
    assert len(found) == 4
    assert found[0] == (
        'operations.push_row.upstream = "clay": unknown upstream; defined: other '
        "(operations.push_row comes from the embedded default; to drop it: [embedded_default] "
        'replace = ["operations.push_row"])'
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/v3/{1bad}",
            "placeholder {1bad} must be an identifier (letters, digits and _, not starting with "
            "a digit), e.g. {thing_id}",
        ),
        ("/v3/{}", "placeholder {} must be an identifier"),
        ("/v3/{id", "has an unbalanced { or }; placeholders look like {thing_id}"),
        ("/v3/id}", "has an unbalanced { or }; placeholders look like {thing_id}"),
        ("v3/x", 'must be a path starting with "/" without spaces, e.g. "/v1/things/{thing_id}"'),
        ("/a b", 'must be a path starting with "/" without spaces'),
    ],
)
def test_bad_path_template(tmp_path: Path, path: str, expected: str) -> None:
    """Paths start with / and their {placeholders} are identifiers."""
    found = one_problem(tmp_path, OP.replace('"/v1/x"', f'"{path}"'))
    assert found.startswith(f'operations.op.path = "{path}": {expected}')


def test_bad_method(tmp_path: Path) -> None:
    """method must be one of the HTTP methods the daemon sends."""
    found = one_problem(tmp_path, OP.replace('"POST"', '"FETCH"'))
    assert found == (
        'operations.op.method = "FETCH": must be one of "GET", "POST", "PUT", "PATCH", "DELETE", '
        '"HEAD", "OPTIONS"'
    )


def test_unknown_on_failure_and_timeout(tmp_path: Path) -> None:
    """on_failure lists its names; timeout takes a class name or a duration."""
    assert problems(tmp_path, OP + 'on_failure = "retry"\ntimeout = "forever"\n') == (
        'operations.op.timeout = "forever": must be a timeout class (connect, request, upload, '
        'long_poll) or a duration > 0 like "45s"',
        'operations.op.on_failure = "retry": must be one of "error", "fallback", "dlq"',
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("660", 'must be a quoted octal string like "0660" (a bare number reads as decimal)'),
        ('"0999"', 'must be an octal permission string from "0000" to "0777", e.g. "0660"'),
        ('"04755"', 'must be an octal permission string from "0000" to "0777", e.g. "0660"'),
    ],
)
def test_bad_socket_mode(tmp_path: Path, value: str, expected: str) -> None:
    """socket_mode is an octal string no wider than 0777."""
    found = one_problem(tmp_path, f"[daemon]\nsocket_mode = {value}\n")
    assert found == f"daemon.socket_mode = {value}: {expected}"


def test_bad_auth_header_and_credential_name(tmp_path: Path) -> None:
    """auth needs a valid header name and a credential that is a plain file name."""
    text = OP + 'auth = { header = "bad header", credential = "../etc/shadow" }\n'
    assert problems(tmp_path, text) == (
        'operations.op.auth.header = "bad header": must be an HTTP header name (letters, digits, '
        '"-", no spaces), e.g. "clay-api-key"',
        'operations.op.auth.credential = "../etc/shadow": must be a plain file name, without "/" '
        '(a file name in credentials_dir, e.g. "clay-api-key")',
    )


def test_incomplete_auth(tmp_path: Path) -> None:
    """auth needs both header and credential."""
    found = one_problem(tmp_path, OP + 'auth = { header = "x-key" }\n')
    assert (
        found == 'operations.op.auth.credential: missing; add it, e.g. credential = "clay-api-key"'
    )


def test_bad_table_name(tmp_path: Path) -> None:
    """Names of upstreams, lanes and operations are restricted to a safe alphabet."""
    found = one_problem(tmp_path, OP.replace("[operations.op]", '[operations."push row"]'))
    assert found.startswith('operations."push row": the name must be 1-64 letters, digits')


def test_socket_path_too_long(tmp_path: Path) -> None:
    """A socket path beyond sun_path's 107 bytes is refused before bind fails obscurely."""
    long = "/tmp/" + "s" * 120 + ".sock"
    found = one_problem(tmp_path, f'[daemon]\nsocket = "{long}"\n')
    assert found == (
        f"daemon.socket: '{long}' is 130 bytes; a Unix socket path must be at most 107 bytes "
        "(choose a shorter one)"
    )


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    """A bad daemon.secrets value is described by type, never printed."""
    found = one_problem(tmp_path, '[daemon]\nsecrets = ["hunter2", ""]\n')
    assert found == (
        'daemon.secrets = <list hidden>: must be a list of non-empty strings, e.g. ["s3cr3t"]'
    )


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error gives the path, line, column, the line itself and a caret."""
    path = tmp_path / "kiln.toml"
    path.write_text('[daemon]\nlog_level = "info\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}, line 2, column 18: TOML syntax error: Illegal character '\\n'\n"
        '    log_level = "info\n'
        "                     ^"
    )


def test_toml_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    """Defining a key twice is reported at the second definition."""
    path = tmp_path / "kiln.toml"
    path.write_text("[daemon]\nlog_level = 'info'\nlog_level = 'debug'\n")
    with pytest.raises(ConfigError, match=r"kiln\.toml, line 3, column \d+: TOML syntax error"):
        load_config(path, env={})


def test_not_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    """A file that is not UTF-8 is refused with the line of the first bad byte."""
    path = tmp_path / "kiln.toml"
    path.write_bytes(b"[daemon]\nlog_level = '\xff'\n")
    with pytest.raises(ConfigError, match=r"kiln\.toml, line 2: .*not UTF-8"):
        load_config(path, env={})


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError naming it."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"config file {path} does not exist"
    assert info.value.problems == (str(info.value),)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory given as the config path is refused with a hint."""
    with pytest.raises(ConfigError, match=r"is a directory; give the path of a \.toml file"):
        load_config(tmp_path, env={})


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """One load reports all problems across sections, one per line, with a count."""
    text = (
        '[daemon]\nlog_level = "loud"\n'
        "[upstreams.clay]\nbase_url = 'ftp://x'\nbreaker = { error_threshold = 2 }\n"
        + OP.replace('"POST"', '"FETCH"')
        + 'on_failure = "retry"\nlanes = "x"\n'
    )
    path = tmp_path / "kiln.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    lines = str(info.value).splitlines()
    assert lines[0] == f"invalid config {path} (6 problems):"
    keys = [w[2] if w[0] == "unknown" else w[0] for w in (line.split() for line in lines[1:])]
    assert keys == [
        "daemon.log_level",
        "upstreams.clay.base_url",
        "upstreams.clay.breaker.error_threshold",
        "operations.op.method",
        "operations.op.on_failure",
        "operations.op.lanes;",
    ]


def test_settings_fields_added_later_are_configurable() -> None:
    """build_policy sets unknown-to-config fields by keyword, typed by their annotation."""

    @attrs.frozen
    class Future:
        ratio: float = 0.5
        drain_timeout: float = 1.0
        count: int = 1
        enabled: bool = False

    problems = Problems()
    table = Table({"ratio": 0.2, "drain_timeout": "2m", "count": 3, "enabled": True}, "x", problems)
    built = build_policy(Future, table, {"ratio": number(0, 1, example=0.5)})
    assert built == Future(ratio=0.2, drain_timeout=120.0, count=3, enabled=True)
    assert problems.lines == []
    bad = Table({"drain_timeout": "soon", "count": -1}, "x", problems)
    assert build_policy(Future, bad, {}) is None
    assert problems.lines == [
        'x.drain_timeout = "soon": must be a duration > 0 like "10s" (units ms, s, m, h, d; a '
        "bare number means seconds)",
        "x.count = -1: must be an integer >= 0, e.g. 1",
    ]


def test_settings_class_validators_are_reported_with_the_table_path() -> None:
    """A settings class's own validator error is reported under the table's key path."""

    def positive(_inst: object, _attr: object, value: int) -> None:
        if value > 10:
            msg = "size must be at most 10"
            raise ValueError(msg)

    @attrs.frozen
    class Checked:
        size: int = attrs.field(default=1, validator=positive)

    problems = Problems()
    assert build_policy(Checked, Table({"size": 11}, "lanes.a", problems), {}) is None
    assert problems.lines == ["lanes.a: size must be at most 10"]
