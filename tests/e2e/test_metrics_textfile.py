"""``[daemon] metrics_textfile`` end to end: a real daemon writing the file node_exporter reads.

The file parses with prometheus_client's own parser every time it is read (it is replaced in
one rename, never seen half written), its counters only go up across a reload that rebuilds the
lanes, a reload can move it, and a directory it cannot write to is logged once, not fatal.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import TrioClient
from claykiln.daemon.metrics import parse_metrics
from claykiln.daemon.simulator import RunningSimulator

Factory = Callable[..., KilnProcess]
WAIT = 20.0

LANES = """
[lanes.critical]
concurrency = {critical}
queue = 100
max_wait = "5s"

[lanes.normal]
concurrency = 5
queue = 50
max_wait = "5s"

[lanes.bulk]
concurrency = 2
queue = 1000
max_wait = "30s"
"""


def _config(simulator: RunningSimulator, textfile: Path, critical: int = 10) -> str:
    text = clay_config(simulator.url, extra=LANES.format(critical=critical))
    keys = f'metrics_textfile = "{textfile}"\nmetrics_interval = "1s"\n'
    return text.replace('grace_period = "5s"\n', 'grace_period = "5s"\n' + keys, 1)


def _read(path: Path) -> dict[str, Any]:
    return parse_metrics(path.read_text())


def _counters(samples: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a counter or a histogram's counts, by name and labels."""
    out = {}
    for name, found in samples.items():
        if name.endswith(("_total", "_count", "_bucket", "_sum")):
            for labels, value in found:
                out[name, tuple(sorted(labels.items()))] = value
    return out


async def _reload(proc: KilnProcess, text: str) -> None:
    before = len(proc.events("config.reloaded"))
    proc.write_config(text)
    proc.signal(signal.SIGHUP)
    while len(proc.events("config.reloaded")) == before:
        assert not proc.events("config.reload_failed"), proc.events("config.reload_failed")
        await trio.sleep(0.02)


async def _calls(proc: KilnProcess, n: int) -> None:
    async with TrioClient(str(proc.socket)) as client:
        for _ in range(n):
            await client.call("me")


async def _until(path: Path, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read the file (parsing it each time) until ``ready`` holds for its samples."""
    while True:
        if path.exists():
            samples = _read(path)
            if ready(samples):
                return samples
        await trio.sleep(0.05)


def _calls_ok(samples: dict[str, Any]) -> float:
    return sum(
        value
        for labels, value in samples.get("claykiln_calls_total", [])
        if labels == {"operation": "me", "outcome": "ok"}
    )


async def test_the_textfile_parses_and_its_counters_only_go_up_across_a_reload(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Calls show in the file; a reload that rebuilds a lane keeps every counter and histogram
    count at least where it was; later calls add to them; no temporary file is left."""
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    path = textdir / "claykiln.prom"
    proc = kiln(_config(simulator, path))
    await proc.start()
    with trio.fail_after(WAIT):
        await _calls(proc, 5)
        first = await _until(path, lambda s: _calls_ok(s) == 5)
        await _reload(proc, _config(simulator, path, critical=4))
        await _calls(proc, 3)
        second = await _until(path, lambda s: _calls_ok(s) == 8)
    before, after = _counters(first), _counters(second)
    assert before, first
    went_down = {k: (v, after[k]) for k, v in before.items() if k in after and after[k] < v}
    assert went_down == {}
    assert set(before) <= set(after)
    lane = {labels["lane"]: value for labels, value in second["claykiln_lane_concurrency"]}
    assert lane["critical"] == 4
    assert second["claykiln_info"][0][1] == 1.0
    assert sorted(p.name for p in textdir.iterdir()) == ["claykiln.prom"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


async def test_a_reader_never_sees_half_a_file(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """Read and parsed as fast as possible while the daemon rewrites it: every read is whole
    (it ends with a newline and holds claykiln_info)."""
    path = tmp_path / "claykiln.prom"
    proc = kiln(_config(simulator, path))
    await proc.start()
    reads = 0
    inodes = set()
    with trio.fail_after(WAIT):
        await _until(path, lambda s: "claykiln_info" in s)
    # Read on through three rewrites (one a second): counted, not timed, since on a loaded
    # machine the daemon's rounds can come later than a fixed 3.5 s allows for.
    with trio.move_on_after(WAIT):
        while len(inodes) < 4 or reads <= 100:
            text = path.read_text()
            inodes.add(path.stat().st_ino)
            assert text.endswith("\n") and "claykiln_info{" in text
            assert "claykiln_info" in parse_metrics(text)
            reads += 1
            await trio.lowlevel.checkpoint()
    assert reads > 100
    assert len(inodes) >= 3  # replaced by rename, not rewritten in place


async def test_a_reload_moves_the_file_and_a_bad_directory_is_logged_once(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A reload can point the file elsewhere; a missing directory logs metrics.write_failed
    once (not every second) and the daemon goes on serving."""
    first, second = tmp_path / "a.prom", tmp_path / "b.prom"
    missing = tmp_path / "no-such-dir" / "c.prom"
    proc = kiln(_config(simulator, first))
    await proc.start()
    with trio.fail_after(WAIT):
        await _until(first, lambda s: "claykiln_info" in s)
        await _reload(proc, _config(simulator, second))
        await _until(second, lambda s: "claykiln_info" in s)
        await _reload(proc, _config(simulator, missing))
        while not proc.events("metrics.write_failed"):
            await trio.sleep(0.05)
        await trio.sleep(2.5)  # two more rounds fail the same way
        await _calls(proc, 1)
    failed = proc.events("metrics.write_failed")
    assert len(failed) == 1
    assert failed[0]["path"] == str(missing) and "FileNotFoundError" in failed[0]["error"]
