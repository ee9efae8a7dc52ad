"""The first hour with claykiln, against real daemons and the simulator: a missing API key the
caller can see, a connect error naming the host, a partial config that keeps the embedded
default (check-config and reload), reload quirks (a base_url set back, a removed upstream's
pool), and a daemon and its clients agreeing on KILN_SOCKET."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import trio
from kiln_harness import API_KEY, KilnProcess

from claykiln.daemon import TrioClient
from claykiln.daemon.launcher import DaemonProcess
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

CLI_TIMEOUT = 60.0  # one CLI run on a busy 2-core machine (interpreter start included)
WAIT = 20.0  # seconds a log event may take to appear
DAEMON = '[daemon]\nlog_format = "json"\ngrace_period = "5s"\n'


def partial(base_url: str, extra: str = "") -> str:
    """The config a newcomer writes: the embedded default with Clay somewhere else."""
    return f'{DAEMON}[upstreams.clay]\nbase_url = "{base_url}"\n{extra}'


async def kiln_cli(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``kiln ARGS`` in a subprocess (KILN_SOCKET unset unless ``env`` sets it)."""
    full = {k: v for k, v in os.environ.items() if k != "KILN_SOCKET"}
    full.update(env or {})
    with trio.fail_after(CLI_TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "claykiln.daemon", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=full,
        )


async def reloaded(proc: DaemonProcess, content: str) -> dict[str, object]:
    """Write ``content`` as the config, SIGHUP, and return the next config.reloaded event."""
    before = len(proc.events("config.reloaded"))
    proc.write_config(content)
    proc.signal(signal.SIGHUP)
    with trio.fail_after(WAIT):
        while len(proc.events("config.reloaded")) == before:
            if proc.events("config.reload_failed"):
                raise AssertionError(proc.events("config.reload_failed"))
            await trio.sleep(0.02)
    return proc.events("config.reloaded")[-1]


async def test_a_missing_api_key_is_visible_to_the_caller(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Without its credential file, kiln call me prints Clay's 401, exits 4 and names the file
    on stderr, and the daemon logs no credentials_rejected (nothing was sent); with a wrong key
    it is an alert and no hint."""
    proc = kiln(partial(simulator.url))
    (proc.creds / "clay-api-key").unlink()
    await proc.start()
    [missing] = proc.events("upstream.credentials_missing")
    assert missing["name"] == "clay-api-key"
    done = await kiln_cli("call", "me", "--socket", str(proc.socket))
    assert done.returncode == 4
    result = json.loads(done.stdout)
    assert result["status"] == 401
    assert result["credential_missing"] == {
        "credential": "clay-api-key",
        "header": "clay-api-key",
        "path": str(proc.creds / "clay-api-key"),
    }
    err = done.stderr.decode()
    assert "kiln: me: the upstream answered 401" in err
    assert f"its credential file {proc.creds / 'clay-api-key'} does not exist" in err
    assert not proc.events("upstream.credentials_rejected")
    (proc.creds / "clay-api-key").write_text("not-the-key\n")
    await reloaded(proc, partial(simulator.url))
    done = await kiln_cli("call", "me", "--socket", str(proc.socket))
    assert done.returncode == 4
    assert "credential_missing" not in json.loads(done.stdout)
    assert "hint" not in done.stderr.decode()
    [rejected] = proc.events("upstream.credentials_rejected")
    assert (rejected["operation"], rejected["status"], rejected["alert"]) == ("me", 401, True)
    assert "not-the-key" not in proc.log_text()
    assert await proc.stop() == 0


async def test_a_connect_error_names_the_host(kiln: Factory) -> None:
    """A call to an upstream nobody listens on says which host and port it could not reach."""
    proc = kiln(partial("http://127.0.0.1:9"))
    await proc.start()
    done = await kiln_cli("call", "me", "--deadline-ms", "10000", "--socket", str(proc.socket))
    assert done.returncode == 1
    assert "upstream_error: upstream clay: could not connect to 127.0.0.1:9 (" in (
        done.stderr.decode()
    )
    assert await proc.stop() == 0


async def test_a_partial_config_keeps_the_default_in_check_config_and_reload(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A file with only [upstreams.clay] base_url keeps auth, pacing and the built-in
    operations (check-config says so); adding one operation and reloading keeps them too."""
    proc = kiln(partial(simulator.url))
    checked = await kiln_cli("check-config", str(proc.config_path))
    assert checked.returncode == 0, checked.stderr.decode()
    summary = checked.stdout.decode()
    assert f"  clay: {simulator.url}  auth clay-api-key <- clay-api-key  rate 10/s burst 20" in (
        summary
    )
    assert "operations (4):" in summary
    await proc.start()
    async with TrioClient(str(proc.socket)) as client:
        assert (await client.call("me"))["status"] == 200  # the key went out
        extra = '[operations.whoami]\nupstream = "clay"\nmethod = "GET"\npath = "/public/v0/me"\n'
        event = await reloaded(proc, partial(simulator.url, extra))
        assert event["restart_required"] == []
        hello = await client.hello()
        ops = set(hello["repeat_safe"]["operations"])
        assert {"me", "poll_routine", "whoami"} <= ops
        assert (await client.call("whoami"))["status"] == 200
        pushed = await client.call("push_row", path_params={"webhook_id": "w1"}, json={"a": 1})
        assert pushed["status"] == 200
    assert await proc.stop() == 0


async def test_a_base_url_set_back_to_the_one_in_use_needs_no_restart(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """base_url changed: restart_required, calls still go to the running URL (and status says
    so); set back: no restart_required."""
    proc = kiln(partial(simulator.url))
    await proc.start()
    event = await reloaded(proc, partial("http://127.0.0.1:9"))
    assert event["restart_required"] == ["upstreams.clay.base_url"]
    async with TrioClient(str(proc.socket)) as client:
        assert (await client.call("me"))["status"] == 200
    event = await reloaded(proc, partial(simulator.url))
    assert event["restart_required"] == []
    assert len(proc.events("config.restart_required")) == 1
    assert await proc.stop() == 0


async def test_a_removed_upstreams_pool_stops_after_its_calls(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A reload removing an upstream stops its pool: the call in flight on it finishes, the pool
    logs upstream.pool_stopped, status no longer lists it, health stays healthy."""
    extra = (
        f'[upstreams.mirror]\nbase_url = "{simulator.url}"\n'
        'auth = { header = "clay-api-key", credential = "clay-api-key" }\n'
        '[operations.mirror_me]\nupstream = "mirror"\nmethod = "GET"\npath = "/public/v0/me"\n'
    )
    proc = kiln(partial(simulator.url, extra))
    await proc.start()
    sim = simulator.sim
    async with TrioClient(str(proc.socket)) as client:
        status = await client.status()
        assert "upstream.mirror" in status["actors"] and "mirror" in status["upstreams"]
        sim.set_faults(Faults(hang=True, path_prefix="/public/v0"))
        answers: list[int] = []
        async with trio.open_nursery() as nursery:

            async def held_call() -> None:
                answers.append((await client.call("mirror_me"))["status"])

            nursery.start_soon(held_call)
            with trio.fail_after(WAIT):
                await sim.wait_until(lambda s: s.stats.hanging == 1)
            await reloaded(proc, partial(simulator.url))
            sim.clear_faults()
        assert answers == [200]
        with trio.fail_after(WAIT):
            while not proc.events("upstream.pool_stopped"):
                await trio.sleep(0.02)
        assert [e["upstream"] for e in proc.events("upstream.pool_stopped")] == ["mirror"]
        with trio.fail_after(WAIT):  # status answers are shared for status_max_age (100 ms)
            while "upstream.mirror" in (status := await client.status())["actors"]:
                await trio.sleep(0.05)
        assert "mirror" not in status["upstreams"]
        assert status["health"] == "healthy"
        assert (await client.call("me"))["status"] == 200
    assert await proc.stop() == 0


class _EnvSocketDaemon(DaemonProcess):
    """A daemon started without --socket: it finds its socket in KILN_SOCKET."""

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--socket")
        return command[:at] + command[at + 2 :]


async def test_serve_and_the_cli_agree_on_kiln_socket(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """kiln serve and kiln status both take KILN_SOCKET when nothing else names a socket."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="kiln-env-", dir="/tmp"))
    socket = root / "env.sock"
    proc = _EnvSocketDaemon(
        root / "d",
        partial(simulator.url),
        credentials={"clay-api-key": API_KEY},
        env={"KILN_SOCKET": str(socket)},
    )
    try:
        await proc.start(ready_within=WAIT)
        done = await kiln_cli("status", "--json", env={"KILN_SOCKET": str(socket)})
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout)["socket"] == str(socket)
        assert await proc.stop(grace=WAIT) == 0
    finally:
        proc.close()
