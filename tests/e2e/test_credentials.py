"""Credentials that cannot be sent as a header value, at start and at reload (real daemon)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import trio
from kiln_harness import API_KEY, KilnProcess, clay_config

from claykiln.daemon import TrioClient
from claykiln.daemon.simulator import RunningSimulator

Factory = Callable[..., KilnProcess]
BAD_KEY = "sk-caf\u00e9-0badbeef"


async def test_a_credential_that_is_not_one_ascii_line_stops_the_start_cleanly(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Exit 1 with daemon.start_failed naming the file, not a traceback, and no secret logged."""
    proc = kiln(clay_config(simulator.url))
    (proc.creds / "clay-api-key").write_text(BAD_KEY + "\n", encoding="utf-8")
    with pytest.raises(AssertionError):
        await proc.start(timeout=15)
    assert proc.proc is not None
    assert proc.proc.returncode == 1
    [failed] = proc.events("daemon.start_failed")
    assert str(proc.creds / "clay-api-key") in failed["error"]
    assert "one line of ASCII text" in failed["error"]
    assert "Traceback" not in proc.log_text()
    assert BAD_KEY not in proc.log_text()


async def test_a_bad_credential_on_reload_keeps_the_running_one(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """SIGHUP with a credential file holding two lines: config.reload_failed, calls go on with
    the key the daemon started with."""
    proc = kiln(clay_config(simulator.url))
    await proc.start()
    (proc.creds / "clay-api-key").write_text("line-one\nline-two\n", encoding="utf-8")
    proc.signal(signal.SIGHUP)
    with trio.fail_after(15):
        while not proc.events("config.reload_failed"):
            await trio.sleep(0.02)
    [failed] = proc.events("config.reload_failed")
    assert "one line of ASCII text" in str(failed)
    async with TrioClient(str(proc.socket)) as client:
        assert (await client.call("me"))["status"] == 200
    assert "line-two" not in proc.log_text()
    assert API_KEY not in proc.log_text()
    assert await proc.stop() == 0
