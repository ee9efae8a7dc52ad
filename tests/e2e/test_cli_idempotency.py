"""``kiln idempotency show|forget`` and ``kiln cache list|purge`` end to end: real
subprocesses against a real daemon and the simulator (stdout is a pipe: JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon.simulator import RunningSimulator

Factory = Callable[..., KilnProcess]

CLI_TIMEOUT = 60.0  # one CLI run on a busy 2-core machine (interpreter start included)
CACHED_ME = """
[operations.me]
upstream = "clay"
gate = "clay-public"
method = "GET"
path = "/public/v0/me"
lane = "critical"
cache = { fresh_for = "1m", stale_for = "10m", max_age = "1h" }

[operations.push_row]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{webhook_id}"
lane = "bulk"
idempotency = "derive"
auth = { header = "x-clay-webhook-auth", credential = "clay-webhook-token" }
"""


async def kiln_cli(socket: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, KILN_SOCKET=str(socket))
    with trio.fail_after(CLI_TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "claykiln.daemon", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


def ok(done: subprocess.CompletedProcess[bytes]) -> Any:
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


async def test_show_and_forget_a_key(kiln: Factory, simulator: RunningSimulator) -> None:
    """A derived key is shown completed; forget deletes it; show then exits 1; a second call
    with the same row runs again."""
    proc = kiln(clay_config(simulator.url, extra=CACHED_ME))
    await proc.start()
    push = ("call", "push_row", "--param", "webhook_id=w1", "--json", '{"a": 1}')
    first = ok(await kiln_cli(proc.socket, *push))
    key = first["idempotency_key"]
    replay = ok(await kiln_cli(proc.socket, *push))
    shown = ok(await kiln_cli(proc.socket, "idempotency", "show", key))
    forgotten = ok(await kiln_cli(proc.socket, "idempotency", "forget", key))
    missing = await kiln_cli(proc.socket, "idempotency", "show", key)
    again = ok(await kiln_cli(proc.socket, *push))
    assert key.startswith("sha256:") and replay["replayed"] is True
    assert (shown["state"], shown["operation"], shown["expired"]) == (
        "completed",
        "push_row",
        False,
    )
    assert shown["result"]["status"] == 200
    assert forgotten == {"key": key, "forgotten": True}
    assert missing.returncode == 1 and b"no record of idempotency key" in missing.stderr
    assert "replayed" not in again
    assert simulator.sim.row_count("w1") == 2
    assert await proc.stop() == 0


async def test_list_and_purge_the_cache(kiln: Factory, simulator: RunningSimulator) -> None:
    """list shows the kept answer of me; purge deletes it and says how many."""
    proc = kiln(clay_config(simulator.url, extra=CACHED_ME))
    await proc.start()
    ok(await kiln_cli(proc.socket, "call", "me"))
    listed: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while not listed:  # the cache actor writes the answer just after the reply
            listed = ok(await kiln_cli(proc.socket, "cache", "list"))
    purged = ok(await kiln_cli(proc.socket, "cache", "purge", "--operation", "me"))
    empty = ok(await kiln_cli(proc.socket, "cache", "list", "--operation", "me"))
    assert [(e["operation"], e["status"]) for e in listed] == [("me", 200)]
    assert purged == {"operation": "me", "purged": 1}
    assert empty == []
    assert await proc.stop() == 0
