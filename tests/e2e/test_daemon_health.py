"""The health monitor against real daemon processes: each check driven by a real input (a
breaker forced open, the simulator gone for a critical upstream, a full disk on a tmpfs, a
wedged actor, a refused key), ``kiln status``'s exit codes (0/1/2, ``--json``, ``--quiet``),
transitions logged once each, the watchdog and ``STATUS=`` following the snapshot, and every
line's journal priority under journald."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.actors.writer import Writer
from claykiln.daemon import TrioClient
from claykiln.daemon.logs import journal_priority
from claykiln.daemon.simulator import RunningSimulator, open_simulator
from claykiln.storage import SCHEMA_VERSION, Put, Store, StoreFull, pack

Factory = Callable[..., KilnProcess]

# Quick readings for tests: every 200 ms, better after 1 s, failures counted over 3 s. Not
# quicker: the watchdog takes 5 intervals without a reading for a stalled daemon
# (watchdog.missed, "health (no evaluation ...)"), and at 100 ms a loaded machine holding the
# process for half a second was enough.
HEALTH = """
[daemon.health]
interval = "200ms"
hold = "1s"
window = "3s"
min_failures = 1
liveness_timeout = "1s"
"""


def config(url: str, *, watched: str = "", extra: str = "") -> str:
    """``clay_config`` with quick health readings; ``watched`` adds keys to [upstreams.clay]."""
    text = clay_config(url, extra=HEALTH + extra)
    return text.replace("max_connections = 64\n", f"max_connections = 64\n{watched}", 1)


async def kiln_status(proc: KilnProcess, *flags: str) -> tuple[int, str]:
    """``kiln status FLAGS`` as a user runs it: its exit code and stdout."""
    done = await trio.run_process(
        [sys.executable, "-m", "claykiln.daemon", "--socket", str(proc.socket), "status", *flags],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode()


async def wait_health(client: TrioClient, state: str) -> dict[str, object]:
    """Poll ``status`` until its health is ``state``; the status that said so."""
    while True:
        status = await client.status()
        if status["health"] == state:
            return status
        await trio.sleep(0.05)


def health_events(proc: KilnProcess) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("check")) for e in proc.events() if e["event"].startswith("health.")]


async def test_a_forced_breaker_degrades_and_kiln_status_exits_1(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Healthy: exit 0. A breaker forced open: degraded at the next reading, exit 1 with
    --quiet, --json and plain; one alert per transition; STATUS= names the breaker; reset, the
    all-clears come once the better reading held for hold."""
    proc = kiln(config(simulator.url))
    await proc.start(env_extra={"WATCHDOG_USEC": "400000"})
    with trio.fail_after(30):
        assert await kiln_status(proc, "--quiet") == (0, "healthy\n")
        async with TrioClient(str(proc.socket)) as client:
            proc.notifications()  # room for what comes next (see degraded_status)
            await client.breaker_force("clay", "open")
            await wait_health(client, "degraded")
            statuses = await degraded_status(proc, "breakers: breaker clay is forced_open")
            code, out = await kiln_status(proc, "--quiet")
            assert (code, out) == (1, "degraded\n")
            code, out = await kiln_status(proc, "--json")
            shown = json.loads(out)
            assert code == 1 and shown["health"] == "degraded"
            check = shown["checks"]["checks"]["breakers"]
            assert check["state"] == "degraded"
            assert check["reason"] == "breaker clay is forced_open"
            assert (await kiln_status(proc))[0] == 1  # a pipe gets JSON, same exit code
            await trio.sleep(0.5)  # more readings: nothing more is logged
            await client.breaker_force("clay", "reset")
            await wait_health(client, "healthy")
        assert (await kiln_status(proc, "--quiet"))[0] == 0
    assert health_events(proc) == [
        ("health.check_degraded", "breakers"),
        ("health.degraded", None),
        ("health.check_healthy", "breakers"),
        ("health.healthy", None),
    ]
    degraded = proc.events("health.degraded")[0]
    assert degraded["alert"] is True and degraded["severity"] == "warning"
    assert degraded["problems"] == ["breakers: breaker clay is forced_open"]
    assert any("degraded: breakers: breaker clay is forced_open" in s for s in statuses)
    assert await proc.stop() == 0


async def degraded_status(proc: KilnProcess, problem: str) -> list[str]:
    """The STATUS= lines read until one says ``degraded: {problem}``, read while it is so: the
    kernel queues only a few unread datagrams (net.unix.max_dgram_qlen, 10 by default) and the
    daemon's later sends fail. With a STATUS= and a WATCHDOG=1 every 0.2 s, reading only at the
    end found it only when the test got here within about a second of READY=1."""
    statuses: list[str] = []
    while not any(f"degraded: {problem}" in s for s in statuses):
        statuses += [n for n in proc.notifications() if n.startswith("STATUS=")]
        await trio.sleep(0.05)
    return statuses


async def test_a_critical_upstream_gone_is_unhealthy_and_the_watchdog_goes_on(
    kiln: Factory,
) -> None:
    """The simulator stops: the probes of a critical upstream fail to connect, the daemon is
    unhealthy (exit 2) while the watchdog keeps pinging (a restart cannot fix Clay); served
    again on its port, it is healthy again."""
    async with open_simulator(api_key="sim-api-key-0123456789") as sim:
        port = sim.port
        watched = 'critical = true\nprobe = { operation = "me", every = "200ms" }\n'
        proc = kiln(config(sim.url, watched=watched))
        await proc.start(env_extra={"WATCHDOG_USEC": "400000"})
        async with TrioClient(str(proc.socket)) as client:
            with trio.fail_after(10):
                await wait_health(client, "healthy")
    # The simulator is gone: connections are refused.
    with trio.fail_after(20):
        async with TrioClient(str(proc.socket)) as client:
            status = await wait_health(client, "unhealthy")
        check = status["checks"]["checks"]["upstream.clay"]  # type: ignore[index]
        assert check["state"] == "unhealthy" and check["reason"].startswith("unreachable")
        assert "last probe: failed" in check["reason"]
        assert status["upstreams"]["clay"]["critical"] is True  # type: ignore[index]
        code, out = await kiln_status(proc, "--quiet")
        assert (code, out) == (2, "unhealthy\n")
        proc.notifications()
        await trio.sleep(1)
        assert any("WATCHDOG=1" in n for n in proc.notifications())  # still pinging
        assert proc.events("watchdog.missed") == []
    async with open_simulator(api_key="sim-api-key-0123456789", port=port):
        with trio.fail_after(20):
            async with TrioClient(str(proc.socket)) as client:
                await wait_health(client, "healthy")
    unhealthy = proc.events("health.unhealthy")
    assert len(unhealthy) == 1 and unhealthy[0]["severity"] == "critical"
    assert unhealthy[0]["problems"][0].startswith("upstream.clay: unreachable")
    assert len(proc.events("health.check_unhealthy")) == 1
    assert [e["check"] for e in proc.events("health.check_healthy")] == ["upstream.clay"]
    assert await proc.stop() == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test (needs root, as CI and the dev machines run)."""
    mount = Path(f"/tmp/kiln-disk-{os.getpid()}-{id(tmp_path)}")
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (not root?): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


async def test_a_full_disk_under_the_store_is_unhealthy(
    kiln: Factory, simulator: RunningSimulator, small_disk: Path
) -> None:
    """The store on a 2 MiB tmpfs (max_map_size 64 MiB): filled up, its ceiling is the disk,
    the daemon is unhealthy (exit 2), the reason names the disk; the watchdog goes on."""
    storage = '\n[daemon.storage]\nmap_size = "4MiB"\nmax_map_size = "64MiB"\n'
    proc = kiln(config(simulator.url).replace("[upstreams.clay]", storage + "[upstreams.clay]"))
    proc.state_dir = small_disk / "state"
    await proc.start(env_extra={"WATCHDOG_USEC": "400000"})
    async with TrioClient(str(proc.socket)) as client:
        with trio.fail_after(10):
            status = await wait_health(client, "healthy")
        reason = status["checks"]["checks"]["storage"]["reason"]  # type: ignore[index]
        assert "the disk under the store" in reason
        # Another process may open the same LMDB environment: fill the disk from here.
        store = await trio.to_thread.run_sync(
            lambda: Store.open(proc.state_dir / "store", map_size=4 * 2**20, max_map_size=2**26)
        )
        try:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    writer = Writer(store)
                    await nursery.start(writer.run)
                    for size in (16384, 1024, 64):
                        with pytest.raises(StoreFull):
                            for i in range(5000):
                                key = f"filler-{size}-{i}".encode()
                                await writer.write([Put("cache", key, b"x" * size)])
                    await writer.aclose()
        finally:
            store.close()
        with trio.fail_after(20):
            status = await wait_health(client, "unhealthy")
        check = status["checks"]["checks"]["storage"]  # type: ignore[index]
        assert check["state"] == "unhealthy" and "the disk under the store" in check["reason"]
        assert (await kiln_status(proc, "--quiet")) == (2, "unhealthy\n")
        proc.notifications()
        with trio.fail_after(10):
            while not any("WATCHDOG=1" in n for n in proc.notifications()):
                await trio.sleep(0.05)
    line = proc.events("health.check_unhealthy")[0]
    assert line["check"] == "storage" and line["severity"] == "critical"
    await proc.stop()


async def test_a_wedged_actor_is_unhealthy_and_stops_the_watchdog(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """KILN_TEST_WEDGE=gate hangs the gate actor's loop: its liveness ask goes unanswered, the
    daemon turns unhealthy (exit 2), the watchdog withholds WATCHDOG=1 (watchdog.missed names
    the gate) and STATUS= says why."""
    proc = kiln(config(simulator.url))
    await proc.start(env_extra={"WATCHDOG_USEC": "400000", "KILN_TEST_WEDGE": "gate"})
    assert proc.events("health.test_wedge")[0]["actor"] == "gate"
    with trio.fail_after(20):
        async with TrioClient(str(proc.socket)) as client:
            status = await wait_health(client, "unhealthy")
        reason = status["checks"]["checks"]["actors"]["reason"]  # type: ignore[index]
        assert "actor gate has not answered a liveness ask" in reason
        assert status["checks"]["stuck"] == ["gate"]  # type: ignore[index]
        assert (await kiln_status(proc, "--quiet")) == (2, "unhealthy\n")
        while not proc.events("watchdog.missed"):
            await trio.sleep(0.05)
        proc.notifications()
        await trio.sleep(1)  # five watchdog periods
        later = proc.notifications()
    assert not any("WATCHDOG=1" in n for n in later)
    assert any(n.startswith("STATUS=") and "watchdog withheld: gate" in n for n in later)
    missed = proc.events("watchdog.missed")[0]
    assert missed["dead"] == ["gate"] and missed["stuck_writer"] is False
    assert missed["alert"] is True and missed["severity"] == "critical"
    assert len(proc.events("health.unhealthy")) == 1
    await proc.stop()


async def test_a_refused_key_degrades_naming_the_file_until_replaced(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Clay answers 401 to a wrong key: the credentials check is degraded, naming the
    credential file; the key replaced and reloaded, it clears."""
    proc = kiln(config(simulator.url))
    good = (proc.creds / "clay-api-key").read_text()
    (proc.creds / "clay-api-key").write_text("wrong-key\n")
    await proc.start()
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            assert (await client.call("me"))["status"] == 401
            status = await wait_health(client, "degraded")
            check = status["checks"]["checks"]["credentials"]  # type: ignore[index]
            assert check["reason"] == (
                f"credential clay-api-key ({proc.creds}/clay-api-key) rejected: clay answered "
                "401 to me"
            )
            (proc.creds / "clay-api-key").write_text(good)
            proc.signal(1)  # SIGHUP: the new key is loaded
            await wait_health(client, "healthy")
            assert (await client.call("me"))["status"] == 200
    rejected = proc.events("upstream.credentials_rejected")
    assert rejected and rejected[0]["severity"] == "critical"
    assert [e["check"] for e in proc.events("health.check_degraded")] == ["credentials"]
    assert await proc.stop() == 0


async def test_under_journald_every_line_carries_its_priority(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """With JOURNAL_STREAM naming its stderr, each line starts with <N>: the alert's severity's
    priority, else the level's capped at notice, so priorities <= 4 (journalctl -p warning)
    select exactly the alert lines."""
    proc = kiln(config(simulator.url))
    proc.log_path.touch()
    st = proc.log_path.stat()
    await proc.start(env_extra={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            await client.breaker_force("clay", "open")  # breaker.forced: a warning, no alert
            await wait_health(client, "degraded")  # health.*: warning alerts
            await client.breaker_force("clay", "reset")
            await wait_health(client, "healthy")  # the all-clears: info alerts
    assert await proc.stop() == 0
    lines = [line for line in proc.log_text().splitlines() if line]
    prefixed = [re.fullmatch(r"<([0-7])>(\{.*\})", line) for line in lines]
    assert all(prefixed), [line for line, m in zip(lines, prefixed, strict=True) if not m][:3]
    parsed = [(int(m.group(1)), json.loads(m.group(2))) for m in prefixed if m]
    for priority, line in parsed:
        assert priority == journal_priority(line), line
    warning_or_above = [line["event"] for p, line in parsed if p <= 4]
    alerts = [line["event"] for _, line in parsed if line.get("alert") is True]
    assert warning_or_above == alerts
    assert {"health.degraded", "health.healthy"} <= set(alerts)
    events = {line["event"]: p for p, line in parsed}
    assert events["breaker.forced"] == 5 and events["daemon.ready"] == 6


async def test_a_store_that_cannot_be_opened_is_a_critical_alert(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A store of a newer schema: the daemon exits 1 before READY with storage.open_failed."""
    proc = kiln(config(simulator.url))
    path = proc.state_dir / "store"
    Store.open(path).close()
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", pack(SCHEMA_VERSION + 1), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(AssertionError, match="exited 1"):
        await proc.start()
    failed = proc.events("storage.open_failed")
    assert failed and failed[0]["alert"] is True and failed[0]["severity"] == "critical"
    assert f"schema version {SCHEMA_VERSION + 1}" in failed[0]["error"]
