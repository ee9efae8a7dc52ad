"""A long mixed load on a daemon while the upstream's faults rotate, and its memory sampled.

``soak`` runs ``callers`` clients against a daemon's socket, each calling in turn ``me`` (a
GET), ``push_row`` (a POST of a fresh row: a derived idempotency key, a record per row),
``start_routine`` (a fresh idempotency key) and ``poll_routine``, while the simulator's fault
plan rotates every ``phase`` seconds through ``PHASES``: ok, 500s, hangs, 429s and connection
resets. Meanwhile the daemon's memory is read from ``/proc/PID/status`` every ``every``
seconds: ``rss`` (VmRSS), ``anon`` (RssAnon: the Python heap and the stacks) and ``file``
(RssFile: the code and the LMDB map's pages in use). Used by the soak test
(test_hardening_state_soak.py) and runnable by hand for an hour (``python soak_load.py``).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from kiln_harness import clay_config

from claykiln.daemon import KilnError, TrioClient
from claykiln.daemon.simulator import Faults, RunningSimulator, SimSettings

PHASES: Final = ("ok", "errors", "hangs", "throttled", "resets")
DEADLINE_MS: Final = 3000
_STATUS_FIELD = re.compile(r"^(VmRSS|RssAnon|RssFile):\s+(\d+) kB", re.MULTILINE)


THROTTLED: Final = {"webhook_rate": 5.0, "webhook_burst": 5, "public_rate": 5.0, "public_burst": 5}
SOAK_CONFIG: Final = """
[operations.push_row]
idempotency_retention = "2m"
webhook = { max_row = "100KB", lifetime_rows = 1000000000 }

[operations.start_routine]
idempotency_retention = "2m"
"""
"""Added to the harness's config: records kept 2 minutes (the store reaches its steady size
within the soak) and no lifetime cap on the soak's four webhook sources."""


def soak_config(base_url: str) -> str:
    """The soak daemon's config: the harness's Clay config with two attempts per call, 2 s
    request timeouts (a hang costs 2 s), breakers that open on 5 failures in a row and stay
    open a fixed 2 s (so every ok phase gets traffic through), and ``SOAK_CONFIG``."""
    text = clay_config(
        base_url,
        attempts=2,
        consecutive=5,
        reset="2s",
        request_timeout="2s",
        extra=SOAK_CONFIG + "\n[breakers.clay-webhook]\n",
    )
    return text.replace(
        "consecutive_connect_failures = 0 }",
        "consecutive_connect_failures = 0, reset_backoff = 1, reset_jitter = 0 }",
    )


def enter_phase(simulator: RunningSimulator, name: str, normal: SimSettings) -> None:
    """Set the simulator up for one phase: a fault plan, or (``throttled``) token buckets of 5/s
    that answer 429 with Retry-After."""
    sim = simulator.sim
    rates = THROTTLED if name == "throttled" else {}
    sim.update_settings(attrs.evolve(normal, **rates))
    if name == "errors":
        sim.set_faults(Faults(error_rate=0.9, error_status=500, seed=1))
    elif name == "hangs":
        sim.set_faults(Faults(hang=True))
    elif name == "resets":
        sim.set_faults(Faults(reset="before_store", reset_rate=0.9, seed=3))
    else:
        sim.set_faults(Faults())


@attrs.frozen
class Sample:
    """The daemon's memory at ``at`` seconds into the soak, in KiB."""

    at: float
    phase: str
    rss: int
    anon: int
    file: int


@attrs.define
class SoakReport:
    """What a soak saw: memory samples, answers per outcome (``ok`` or an error code)."""

    samples: list[Sample] = attrs.Factory(list)
    outcomes: Counter[str] = attrs.Factory(Counter)

    def anon_growth_kib(self, after: float) -> int:
        """RssAnon at the end minus its lowest value after ``after`` seconds of warm-up."""
        settled = [s.anon for s in self.samples if s.at >= after]
        return self.samples[-1].anon - min(settled) if settled else 0

    def summary(self) -> dict[str, Any]:
        first, last = self.samples[0], self.samples[-1]
        return {
            "seconds": round(last.at, 1),
            "rss_mib": [round(first.rss / 1024, 1), round(last.rss / 1024, 1)],
            "anon_mib": [round(first.anon / 1024, 1), round(last.anon / 1024, 1)],
            "max_anon_mib": round(max(s.anon for s in self.samples) / 1024, 1),
            "outcomes": dict(self.outcomes),
        }


def memory_of(pid: int) -> tuple[int, int, int]:
    """(VmRSS, RssAnon, RssFile) of process ``pid`` in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    fields = dict(_STATUS_FIELD.findall(text))
    return int(fields["VmRSS"]), int(fields["RssAnon"]), int(fields["RssFile"])


async def _caller(
    socket: str, index: int, stop_at: float, outcomes: Counter[str], pad: str
) -> None:
    sequence = itertools.count()
    async with TrioClient(socket) as client:
        while trio.current_time() < stop_at:
            n = next(sequence)
            kind = (index + n) % 4
            try:
                if kind == 0:
                    await client.call("me", deadline_ms=DEADLINE_MS)
                elif kind == 1:
                    await client.call(
                        "push_row",
                        path_params={"webhook_id": f"soak{index % 4}"},
                        json={"caller": index, "n": n, "at": time.time(), "pad": pad},
                        deadline_ms=DEADLINE_MS,
                    )
                elif kind == 2:
                    await client.call(
                        "start_routine",
                        path_params={"routine_id": "r1"},
                        json={"inputs": {"n": n}},
                        idempotency_key=f"soak-{index}-{n}-{time.time_ns()}",
                        deadline_ms=DEADLINE_MS,
                    )
                else:
                    await client.call(
                        "poll_routine",
                        path_params={"routine_id": "r1", "run_id": f"run-{n % 50}"},
                        deadline_ms=DEADLINE_MS,
                    )
                outcomes["ok"] += 1
            except KilnError as exc:
                outcomes[exc.code] += 1
                if exc.code in ("breaker_open", "rate_limited", "lane_full"):
                    await trio.sleep(0.05)  # a polite caller backs off a little


async def soak(
    socket: Path,
    pid: int,
    simulator: RunningSimulator,
    *,
    seconds: float,
    phase: float,
    callers: int = 16,
    every: float = 5.0,
    row_bytes: int = 0,
    on_sample: Callable[[Sample], None] | None = None,
) -> SoakReport:
    """Run the load for ``seconds`` with faults rotating every ``phase`` seconds; the report.
    ``row_bytes`` pads each pushed row (more bytes through each connection per call)."""
    report = SoakReport()
    start = trio.current_time()
    stop_at = start + seconds
    current = [PHASES[0]]
    normal = simulator.sim.settings

    async def rotate() -> None:
        for name in itertools.cycle(PHASES):
            current[0] = name
            enter_phase(simulator, name, normal)
            await trio.sleep(phase)

    async def sample() -> None:
        while True:
            rss, anon, file = memory_of(pid)
            taken = Sample(round(trio.current_time() - start, 1), current[0], rss, anon, file)
            report.samples.append(taken)
            if on_sample is not None:
                on_sample(taken)
            await trio.sleep(every)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rotate)
        nursery.start_soon(sample)
        async with trio.open_nursery() as load:
            for index in range(callers):
                load.start_soon(
                    _caller, str(socket), index, stop_at, report.outcomes, "p" * row_bytes
                )
        enter_phase(simulator, "ok", normal)
        rss, anon, file = memory_of(pid)
        report.samples.append(Sample(round(trio.current_time() - start, 1), "end", rss, anon, file))
        nursery.cancel_scope.cancel()
    return report


if __name__ == "__main__":  # pragma: no cover - a manual run: python soak_load.py SECONDS PHASE
    import json
    import sys
    import tempfile

    from kiln_harness import API_KEY, KilnProcess

    from claykiln.daemon.simulator import open_simulator

    async def main(seconds: float, phase: float) -> None:
        async with open_simulator(
            api_key=API_KEY, webhook_rate=1000, webhook_burst=1000
        ) as simulator:
            root = Path(tempfile.mkdtemp(prefix="kiln-soak-", dir="/tmp"))
            proc = KilnProcess(root, soak_config(simulator.url))
            await proc.start()
            assert proc.pid is not None
            try:
                report = await soak(
                    proc.socket,
                    proc.pid,
                    simulator,
                    seconds=seconds,
                    phase=phase,
                    every=30.0,
                    on_sample=lambda s: print(json.dumps(attrs.asdict(s)), flush=True),
                )
            finally:
                await proc.stop()
                proc.close()
            print(json.dumps(report.summary()), flush=True)
            print(f"log: {proc.log_path}", file=sys.stderr)

    trio.run(main, float(sys.argv[1]), float(sys.argv[2]))
    os._exit(0)
