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

import trio
from kiln_harness import KilnProcess, clay_config

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


async def _daemon(kiln: Factory, simulator: RunningSimulator) -> KilnProcess:
    proc = kiln(clay_config(simulator.url))
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
