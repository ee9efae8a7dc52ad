"""``kiln top`` and ``kiln metrics`` end to end: real CLI processes against a real daemon.

``--once`` in a pipe prints every lane, upstream, breaker and gate and the DLQ count; the live
view runs in a real pseudo-terminal (pexpect) at 80 x 24 under load for a few seconds, redraws,
quits on q and on Ctrl-C with the terminal's modes as they were before.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from pathlib import Path

import attrs
import pexpect
import trio
from kiln_harness import KilnProcess
from outbox_harness import Factory, outbox_config, push, wait_for
from test_cli import kiln_cli

from claykiln.daemon import TrioClient
from claykiln.daemon.metrics import parse_metrics
from claykiln.daemon.simulator import RunningSimulator

EXTRA = """
[lanes.reports]
concurrency = 3
queue = 7
max_wait = "1s"

[upstreams.billing]
base_url = "{url}"

[gates.clay-public]

[gates.exports]
per_second = 4
burst = 8
"""
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
PTY_TIMEOUT = 30


async def _daemon(kiln: Factory, simulator: RunningSimulator) -> KilnProcess:
    sim = simulator.sim  # room for the test's load on Clay's Public API
    sim.update_settings(attrs.evolve(sim.settings, public_rate=1e6, public_burst=1_000_000))
    proc = kiln(outbox_config(simulator.url, extra=EXTRA.format(url=simulator.url)))
    await proc.start()
    return proc


async def _one_dead_job(proc: KilnProcess, simulator: RunningSimulator) -> None:
    simulator.sim.configure_webhook("locked", token="not-the-daemons-token")
    async with TrioClient(str(proc.socket)) as client:
        await client.submit("push_row", **push("locked", {"n": 1}))
        await wait_for(client, lambda s: s["dead"] == 1)


async def _ticked_dead(proc: KilnProcess, dead: int) -> None:
    """Until the daemon has published a tick counting ``dead`` dead jobs (ticks come every
    second; on a loaded machine the one after the job died can come later than that)."""
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client, client.subscribe(["tick"]) as sub:
            tick = sub.info.get("tick")
            while tick is None or tick["outbox"]["dead"] != dead:
                note = await sub.receive()
                if note.method == "tick":
                    tick = note.args


async def test_top_once_shows_every_lane_upstream_gate_and_the_dlq(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """In a pipe, ``kiln top --once`` prints one line per lane, upstream, breaker and gate of
    the config and the DLQ count, and exits 0."""
    proc = await _daemon(kiln, simulator)
    await _one_dead_job(proc, simulator)
    await _ticked_dead(proc, 1)  # top --once shows the latest tick: one that counts the job
    done = await kiln_cli(proc.socket, "top", "--once")
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    names = {tuple(line.split()[:2]) for line in lines}
    for lane in ("critical", "normal", "bulk", "reports"):
        assert ("lane", lane) in names, lines
    for upstream in ("clay", "billing"):
        assert ("upstream", upstream) in names, lines
    for gate in ("clay", "clay-public", "exports", "billing"):
        assert ("gate", gate) in names, lines
    assert ("breaker", "clay") in names and ("breaker", "clay-webhook") in names
    assert "lane reports active 0/3 queued 0/7 rejected 0" in lines
    assert "dlq 1" in lines
    assert any(line.startswith("outbox ") and line.endswith("dead 1") for line in lines)


async def test_kiln_metrics_prints_what_prometheus_parses(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """``kiln metrics`` is Prometheus text that its parser reads; ``--json`` is the samples."""
    proc = await _daemon(kiln, simulator)
    async with TrioClient(str(proc.socket)) as client:
        for _ in range(3):
            await client.call("me")
    done = await kiln_cli(proc.socket, "metrics")
    assert done.returncode == 0, done.stderr.decode()
    samples = parse_metrics(done.stdout.decode())
    calls = {
        (labels["operation"], labels["outcome"]): value
        for labels, value in samples["claykiln_calls_total"]
    }
    assert calls[("me", "ok")] == 3
    assert samples["claykiln_info"] == [
        ({"version": samples["claykiln_info"][0][0]["version"]}, 1.0)
    ]
    lanes = {labels["lane"] for labels, _ in samples["claykiln_lane_concurrency"]}
    assert lanes == {"critical", "normal", "bulk", "reports"}
    as_json = await kiln_cli(proc.socket, "metrics", "--json")
    assert b'"claykiln_calls_total"' in as_json.stdout


def _spawn_top(socket: Path, script: str) -> pexpect.spawn:
    """``bash -c script`` in a fresh 80 x 24 pseudo-terminal; ``$KILN`` runs the CLI."""
    env = dict(os.environ, KILN_SOCKET=str(socket), TERM="xterm-256color", COLUMNS="80", LINES="24")
    env["KILN"] = f"{sys.executable} -m claykiln.daemon"
    child = pexpect.spawn(
        "/bin/bash", ["-c", script], env=env, dimensions=(24, 80), timeout=PTY_TIMEOUT
    )
    child.logfile_read = io.BytesIO()  # everything the terminal got
    return child


def _output(child: pexpect.spawn) -> bytes:
    log = child.logfile_read
    assert isinstance(log, io.BytesIO)
    return log.getvalue()


def _screens(raw: bytes) -> list[bytes]:
    """The redraws in a pty's output while on the alternate screen: rich moves the cursor home
    before each frame."""
    shown = raw.split(b"\x1b[?1049h", 1)[-1].split(b"\x1b[?1049l", 1)[0]
    return [chunk for chunk in shown.split(b"\x1b[H") if b"kiln top" in chunk]


async def _load(path: str, stop: trio.Event) -> int:
    calls = 0
    async with TrioClient(path) as client:
        while not stop.is_set():
            await client.call("me")
            calls += 1
    return calls


async def test_the_live_view_redraws_under_load_and_quits_on_q(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """In a real pty at 80 x 24, under calls, the view redraws several times with the lanes,
    the upstream's rate and the breakers in it, no frame is wider than 80 columns, q exits 0,
    and the terminal's modes are those it had before."""
    proc = await _daemon(kiln, simulator)
    stop = trio.Event()
    before, after = proc.root / "stty-before", proc.root / "stty-after"
    child = _spawn_top(
        proc.socket,
        f'stty -a > {before}; $KILN top; echo "TOP-EXIT=$?"; stty -a > {after}',
    )
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(_load, str(proc.socket), stop)
            await trio.to_thread.run_sync(child.expect, "UPSTREAMS")
            # Read the frames as they come (each begins with its title), for 3 s and until five
            # have come: 4 redraws a second make 12, fewer when the view is starved on a loaded
            # machine. Read, not slept through: a pty nobody reads fills up and blocks the view
            # mid-frame, and q then ended it with that frame cut short.
            until = trio.current_time() + 3.0
            while trio.current_time() < until or len(_screens(_output(child))) < 5:
                await trio.to_thread.run_sync(child.expect, "kiln top")
            child.send("q")
            await trio.to_thread.run_sync(child.expect, r"TOP-EXIT=(\d+)")
            stop.set()
        status = int(child.match.group(1))
        await trio.to_thread.run_sync(child.expect, pexpect.EOF)
        raw = _output(child)
    finally:
        stop.set()
        child.close(force=True)
    assert status == 0
    screens = _screens(raw)
    assert len(screens) >= 5  # 4 redraws a second for 3 s
    last = ANSI.sub(b"", screens[-1]).decode()
    for text in ("LANES", "reports", "UPSTREAMS", "clay", "BREAKERS", "GATES", "DLQ 0"):
        assert text in last, last
    assert re.search(r"clay\s+\d+\.\d/s", last), last
    assert b"\x1b[?1049h" in raw and b"\x1b[?1049l" in raw  # the alternate screen, given back
    assert raw.rfind(b"\x1b[?25h") > raw.rfind(b"\x1b[?25l")  # the cursor shown again
    for screen in screens:
        for row in ANSI.sub(b"", screen).decode(errors="replace").split("\r\n"):
            assert len(row) <= 80
    assert _modes(before) == _modes(after)
    assert "icanon" in _modes(after) and "echo" in _modes(after)


def _modes(path: Path) -> set[str]:
    """The on/off modes ``stty -a`` listed (``icanon``, ``-echo`` ...)."""
    text = path.read_text()
    return {word for word in text.split() if re.fullmatch(r"-?[a-z]+[0-9]*", word)}


async def test_ctrl_c_quits_the_live_view_cleanly(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Ctrl-C ends the view with exit 0, no traceback, the terminal's modes restored."""
    proc = await _daemon(kiln, simulator)
    before, after = proc.root / "stty-before", proc.root / "stty-after"
    child = _spawn_top(
        proc.socket, f'stty -a > {before}; $KILN top; echo "TOP-EXIT=$?"; stty -a > {after}'
    )
    try:
        await trio.to_thread.run_sync(child.expect, "LANES")
        began = time.monotonic()
        child.sendintr()
        await trio.to_thread.run_sync(child.expect, r"TOP-EXIT=(\d+)")
        status = int(child.match.group(1))
        await trio.to_thread.run_sync(child.expect, pexpect.EOF)
        raw = _output(child)
    finally:
        child.close(force=True)
    assert status == 0
    assert time.monotonic() - began < PTY_TIMEOUT
    assert b"Traceback" not in raw
    assert b"\x1b[?1049l" in raw
    assert _modes(before) == _modes(after)
