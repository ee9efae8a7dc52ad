"""The ``kiln`` command line end to end: real subprocesses against a real daemon and simulator.

Each command runs as ``python -m claykiln.daemon ...`` with ``KILN_SOCKET`` pointing at the
daemon (the documented precedence), its stdout is a pipe (so results print as JSON), and the
exit codes are the CONTRACT: 0 ok, 1 refused by the daemon, 2 usage or config error,
3 daemon unreachable.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import TrioClient, UpstreamError
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

CLI_TIMEOUT = 60.0  # one CLI run on a busy 2-core machine (interpreter start included)
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


async def kiln_cli(socket: Path | None, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``kiln ARGS`` with ``KILN_SOCKET=socket`` (unset when None); never raises on exit."""
    env = dict(os.environ)
    env.pop("KILN_SOCKET", None)
    if socket is not None:
        env["KILN_SOCKET"] = str(socket)
    with trio.fail_after(CLI_TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "claykiln.daemon", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


def _json(done: subprocess.CompletedProcess[bytes]) -> Any:
    assert done.returncode == EXIT_OK, done.stderr.decode()
    return json.loads(done.stdout)


def _err(done: subprocess.CompletedProcess[bytes]) -> str:
    stderr: bytes = done.stderr
    return stderr.decode()


async def _daemon(kiln: Factory, simulator: RunningSimulator, **kw: Any) -> KilnProcess:
    proc = kiln(clay_config(simulator.url, **kw))
    await proc.start()
    return proc


async def test_status_hello_and_calls_print_json(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """status --json, hello, call me and call push_row print parseable JSON and exit 0."""
    proc = await _daemon(kiln, simulator)
    # --socket wins over KILN_SOCKET (here pointing nowhere).
    status = _json(
        await kiln_cli(
            proc.root / "elsewhere.sock", "--socket", str(proc.socket), "status", "--json"
        )
    )
    assert status["health"] == "healthy"
    assert proc.proc is not None and status["pid"] == proc.proc.pid
    assert status["socket"] == str(proc.socket)
    hello = _json(await kiln_cli(proc.socket, "hello"))
    assert hello["protocol"] == 1
    assert hello["server"].startswith("claykiln ")
    me = _json(await kiln_cli(proc.socket, "call", "me"))
    assert me["status"] == 200
    assert me["body"]["user"]["email"] == "sim@example.com"
    pushed = _json(
        await kiln_cli(
            proc.socket, "call", "push_row", "--param", "webhook_id=w1", "--json", '{"a":1}'
        )
    )
    assert pushed["status"] == 200
    assert simulator.sim.row_count("w1") == 1
    assert simulator.sim.rows("w1")[0].body == {"a": 1}
    assert await proc.stop() == 0


async def test_bad_input_exits_2_and_unknown_operation_exits_1(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Malformed --json / --param exit 2 with a clear message; an unknown operation exits 1."""
    proc = await _daemon(kiln, simulator)
    bad_json = await kiln_cli(proc.socket, "call", "push_row", "--json", "{bad")
    assert bad_json.returncode == EXIT_USAGE
    assert "--json is not valid JSON" in _err(bad_json)
    bad_param = await kiln_cli(proc.socket, "call", "push_row", "--param", "novalue")
    assert bad_param.returncode == EXIT_USAGE
    assert "--param takes key=value" in _err(bad_param)
    assert "'novalue'" in _err(bad_param)
    bad_deadline = await kiln_cli(proc.socket, "call", "me", "--deadline-ms", "soon")
    assert bad_deadline.returncode == EXIT_USAGE
    assert "--deadline-ms" in _err(bad_deadline)
    unknown = await kiln_cli(proc.socket, "call", "no_such_op")
    assert unknown.returncode == EXIT_REFUSED
    assert "unknown_operation" in _err(unknown)
    assert "no_such_op" in _err(unknown)
    assert unknown.stdout == b""
    assert simulator.sim.stats.clay_requests == 0  # nothing malformed ever reached Clay
    assert await proc.stop() == 0


async def test_no_daemon_listening_exits_3_naming_the_socket(tmp_path: Path) -> None:
    """kiln status with no file or a stale socket file at KILN_SOCKET exits 3 naming the path."""
    missing = tmp_path / "nobody-here.sock"
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_behind:
        left_behind.bind(str(stale))  # a socket file nobody listens on (a crashed daemon's)
    for path in (missing, stale):
        done = await kiln_cli(path, "status")
        assert done.returncode == EXIT_UNREACHABLE, path
        assert str(path) in _err(done)
        assert done.stdout == b""


async def test_check_config_accepts_a_good_file_and_names_the_bad_key(tmp_path: Path) -> None:
    """check-config: a good file exits 0 with "config OK"; a bad one exits 2 naming the key."""
    good = tmp_path / "good.toml"
    good.write_text(clay_config("http://127.0.0.1:9"))
    done = await kiln_cli(None, "check-config", str(good))
    assert done.returncode == EXIT_OK, _err(done)
    assert "config OK" in done.stdout.decode()
    bad = tmp_path / "bad.toml"
    bad.write_text(
        clay_config("http://127.0.0.1:9")
        + "\n[lanes.critical]\nconcurrency = 0\n[lanes.normal]\n[lanes.bulk]\n"
    )
    done = await kiln_cli(None, "check-config", str(bad))
    assert done.returncode == EXIT_USAGE
    assert "lanes.critical.concurrency" in _err(done)
    assert "config OK" not in done.stdout.decode()
    typo = tmp_path / "typo.toml"
    typo.write_text(clay_config("http://127.0.0.1:9").replace("max_connections", "max_conections"))
    done = await kiln_cli(None, "check-config", str(typo))
    assert done.returncode == EXIT_USAGE
    assert "upstreams.clay.max_conections" in _err(done)


async def test_breaker_open_list_and_reset(kiln: Factory, simulator: RunningSimulator) -> None:
    """breaker open clay shows forced_open in list --json and refuses calls; reset closes it."""
    proc = await _daemon(kiln, simulator)
    opened = _json(await kiln_cli(proc.socket, "breaker", "open", "clay"))
    assert opened["state"] == "forced_open"
    views = {v["key"]: v for v in _json(await kiln_cli(proc.socket, "breaker", "list", "--json"))}
    assert views["clay"]["state"] == "forced_open"
    refused = await kiln_cli(proc.socket, "call", "me")
    assert refused.returncode == EXIT_REFUSED
    assert "breaker_open" in _err(refused)
    reset = _json(await kiln_cli(proc.socket, "breaker", "reset", "clay"))
    assert reset["state"] == "closed"
    views = {v["key"]: v for v in _json(await kiln_cli(proc.socket, "breaker", "list", "--json"))}
    assert views["clay"]["state"] == "closed"
    assert _json(await kiln_cli(proc.socket, "call", "me"))["status"] == 200
    assert simulator.sim.stats.received["public"] == 1  # the refused call never left the host
    assert await proc.stop() == 0


async def test_call_past_its_deadline_exits_1_naming_the_timeout(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """kiln call --deadline-ms against a hanging Clay exits 1 with timeout and its stage."""
    proc = await _daemon(kiln, simulator)
    simulator.sim.set_faults(Faults(hang=True, path_prefix="/public/v0"))
    # 1 s: long enough for the request to reach the simulator even on a very busy machine.
    done = await kiln_cli(proc.socket, "call", "me", "--deadline-ms", "1000")
    assert done.returncode == EXIT_REFUSED
    assert "timeout:" in _err(done)
    assert '"stage": "deadline"' in _err(done)
    with trio.fail_after(CLI_TIMEOUT):
        await simulator.sim.wait_until(lambda s: s.stats.abandoned["public"] == 1)
    assert simulator.sim.stats.hanging == 0
    assert await proc.stop() == 0


async def test_socket_and_config_are_taken_after_the_command_too(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """--socket and --config work after the command name (and a group's subcommand) as before."""
    proc = await _daemon(kiln, simulator)
    status = _json(await kiln_cli(None, "status", "--json", "--socket", str(proc.socket)))
    assert status["socket"] == str(proc.socket)
    views = _json(await kiln_cli(None, "breaker", "list", "--json", "--socket", str(proc.socket)))
    assert isinstance(views, list)
    me = _json(await kiln_cli(None, "call", "me", "--socket", str(proc.socket)))
    assert me["status"] == 200
    # The command's own option wins over the one before it.
    elsewhere = str(proc.root / "elsewhere.sock")
    hello = await kiln_cli(None, "--socket", elsewhere, "hello", "--socket", str(proc.socket))
    assert _json(hello)["protocol"] == 1
    config = tmp_path / "client.toml"
    config.write_text(f'[daemon]\nsocket = "{proc.socket}"\n')
    assert _json(await kiln_cli(None, "status", "--config", str(config)))["pid"] == proc.pid
    assert await proc.stop() == 0


async def test_headers_take_the_curl_form_and_key_value(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """-H "x-request-id: a" and -H x-request-id=b both reach Clay; a header without either
    separator exits 2 naming both forms."""
    proc = await _daemon(kiln, simulator)
    for n, (header, value) in enumerate(
        (("x-request-id: t 1", "t 1"), ("x-request-id=b:c", "b:c"))
    ):
        row = json.dumps({"n": n})  # a row of its own: the same row again would be a replay
        pushed = await kiln_cli(
            proc.socket, "call", "push_row", "-p", "webhook_id=w1", "--json", row, "-H", header
        )
        assert _json(pushed)["status"] == 200
        assert simulator.sim.rows("w1")[-1].headers["x-request-id"] == value
    bad = await kiln_cli(proc.socket, "call", "me", "-H", "x-request-id")
    assert bad.returncode == EXIT_USAGE
    assert 'takes key=value or "Name: value"' in _err(bad)
    assert await proc.stop() == 0


async def test_an_unreachable_daemon_is_reported_like_every_other_error(tmp_path: Path) -> None:
    """daemon_unavailable: kiln: CODE: message, naming the path, where it came from, and both
    ways to name another socket."""
    missing = tmp_path / "nobody.sock"
    done = await kiln_cli(None, "status", "--socket", str(missing))
    assert done.returncode == EXIT_UNREACHABLE
    line = _err(done).strip()
    assert line.startswith(f"kiln: daemon_unavailable: no claykiln daemon answers at {missing}")
    assert "(--socket: " in line
    assert "--socket PATH or KILN_SOCKET=PATH" in line
    assert "retried for 5 s, --connect-timeout SECONDS waits longer" in line  # the default
    done = await kiln_cli(missing, "status")
    assert f"({'KILN_SOCKET'}: " in _err(done)


async def test_connect_timeout_sets_how_long_a_command_waits_for_a_daemon(tmp_path: Path) -> None:
    """--connect-timeout (before or after the command) and KILN_CONNECT_TIMEOUT set how long a
    client command retries a socket nobody answers on (a restart); 0 tries once. The wait
    says what it was; a value out of range is a usage error."""
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # bound, never listening: connection refused, as mid-restart
    once = await kiln_cli(stale, "hello", "--connect-timeout", "0")
    assert once.returncode == EXIT_UNREACHABLE
    assert "Connection refused; tried once" in _err(once)
    before = await kiln_cli(stale, "--connect-timeout", "0.2", "top", "--once")
    assert before.returncode == EXIT_UNREACHABLE
    assert "retried for 0.2 s" in _err(before)
    env = dict(os.environ, KILN_SOCKET=str(stale), KILN_CONNECT_TIMEOUT="0.3")
    with trio.fail_after(CLI_TIMEOUT):
        by_env = await trio.run_process(
            [sys.executable, "-m", "claykiln.daemon", "status"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    assert by_env.returncode == EXIT_UNREACHABLE
    assert "retried for 0.3 s" in _err(by_env)
    bad = await kiln_cli(stale, "hello", "--connect-timeout", "-1")
    assert bad.returncode == EXIT_USAGE and "--connect-timeout" in _err(bad)


async def test_refusals_say_when_to_retry_once(kiln: Factory, simulator: RunningSimulator) -> None:
    """A breaker_open refusal states its retry time once, not twice."""
    proc = await _daemon(kiln, simulator, volume=2)
    simulator.sim.set_faults(Faults(error_rate=1.0, error_status=503, path_prefix="/public/v0"))
    with trio.fail_after(CLI_TIMEOUT):
        async with TrioClient(str(proc.socket)) as client:
            for _ in range(2):
                with pytest.raises(UpstreamError):
                    await client.call("me")
    refused = await kiln_cli(proc.socket, "call", "me")
    assert refused.returncode == EXIT_REFUSED
    first = _err(refused).splitlines()[0]
    assert first.startswith("kiln: breaker_open: ")
    assert first.count("retry") == 1, first
    assert await proc.stop() == 0


async def test_call_exits_4_and_5_for_the_upstreams_4xx_and_5xx(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A 404 answer exits 4 (printed, with a line on stderr), 0 with --no-check-status; a 503
    the retries ended on exits 5, 1 with --no-check-status."""
    proc = await _daemon(kiln, simulator)
    poll = ("call", "poll_routine", "-p", "routine_id=r1", "-p", "run_id=nope")
    not_found = await kiln_cli(proc.socket, *poll)
    assert not_found.returncode == 4
    assert json.loads(not_found.stdout)["status"] == 404
    assert "kiln: poll_routine: the upstream answered 404" in _err(not_found)
    unchecked = await kiln_cli(proc.socket, *poll, "--no-check-status")
    assert unchecked.returncode == EXIT_OK
    assert _err(unchecked) == ""
    simulator.sim.set_faults(Faults(error_rate=1.0, error_status=503, path_prefix="/public/v0"))
    failed = await kiln_cli(proc.socket, "call", "me")
    assert failed.returncode == 5
    assert _err(failed).startswith("kiln: upstream_error: ")
    assert '"status": 503' in _err(failed)
    failed = await kiln_cli(proc.socket, "call", "me", "--no-check-status")
    assert failed.returncode == EXIT_REFUSED
    assert await proc.stop() == 0


async def test_check_config_warns_about_a_missing_credential_file(tmp_path: Path) -> None:
    """check-config exits 0 naming a missing credential file (2 with --strict); with no PATH it
    checks --config's file."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "clay-api-key").write_text("k\n")
    config = tmp_path / "kiln.toml"
    config.write_text(f'[daemon]\ncredentials_dir = "{creds}"\n')
    done = await kiln_cli(None, "check-config", str(config))
    assert done.returncode == EXIT_OK, _err(done)
    assert f"kiln: warning: credential clay-webhook-token (operations.push_row.auth): {creds}/" in (
        _err(done)
    )
    assert "config OK, with 1 warning (above)" in done.stdout.decode()
    strict = await kiln_cli(None, "check-config", "--strict", "--config", str(config))
    assert strict.returncode == EXIT_USAGE
    assert "--strict fails on warnings" in _err(strict)
    (creds / "clay-webhook-token").write_text("t\n")
    done = await kiln_cli(None, "--config", str(config), "check-config")
    assert done.returncode == EXIT_OK and done.stdout.decode().endswith("config OK\n")


async def test_config_show_prints_a_file_that_loads_the_same(tmp_path: Path) -> None:
    """config show: the file over the embedded default, secrets redacted, loadable as is;
    config default prints default.toml."""
    from claykiln.daemon.config import default_toml, load_config

    config = tmp_path / "kiln.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\nsecrets = ["hunter2"]\n'
        '[upstreams.clay]\nbase_url = "http://127.0.0.1:9"\nheaders = { "x-api-key" = "s3" }\n'
    )
    shown = await kiln_cli(None, "config", "show", str(config))
    assert shown.returncode == EXIT_OK, _err(shown)
    text = shown.stdout.decode()
    assert "hunter2" not in text and "s3" not in text and "<redacted>" in text
    assert f'state_dir = "{tmp_path / "state"}"' in text
    copy = tmp_path / "elsewhere" / "shown.toml"
    copy.parent.mkdir()
    copy.write_text(text)
    original, again = load_config(config, env={}), load_config(copy, env={})
    redacted = {"user-agent": "claykiln/0.1", "x-api-key": "<redacted>"}
    assert again.upstreams["clay"] == attrs.evolve(original.upstreams["clay"], headers=redacted)
    assert again.operations == original.operations
    assert (again.lanes, again.gates, again.breakers) == (
        original.lanes,
        original.gates,
        original.breakers,
    )
    assert again.daemon.state_dir == original.daemon.state_dir
    default = await kiln_cli(None, "config", "default")
    assert default.stdout.decode() == default_toml()
