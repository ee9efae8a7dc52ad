"""``kiln bench --scenario abuse``: honest callers beside hostile local clients.

The honest side is ``--concurrency`` (64) connections calling ``hello`` in a closed loop (the
lean load generator, its own process). The hostile side is one process
(``python -m claykiln.daemon.bench.abuse``), a thread per client, each cheap for the machine
so that what the honest callers lose is what the daemon gives away:

- ``status-flood``: pipelines ``FLOOD_BATCH`` ``status`` requests, reads the replies as bytes
  (no decoding) and does it again;
- ``never-reading``: sends ``status`` requests until the daemon stops reading it and never
  reads a reply; once cut off (``reply_timeout``) it connects again;
- ``drip``: sends a frame one byte every ``DRIP_EVERY`` seconds; once cut off
  (``frame_timeout``) it connects again;
- ``worst-frames``: sends 1 MiB frames of about a million empty arrays, again and again (each
  refused at ``max_containers``; the daemon closes the connection, it connects again).

Measured A-B-B-A (without, with, with, without the hostile process), ``ROUNDS`` times over in
shorter runs (the machine's speed swings within seconds), twice: closed loop for
the honest throughput with them as a ratio of the throughput without (target >= 0.8), then
paced (open loop, ``PACED_RATE`` requests/s over the same connections) for the honest p99 with
them (target < 10 ms): a closed loop's latency is mostly its own queue (callers / throughput),
the paced one is the service time the hostile clients add. The hostile process reports what
each client got done.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Final

import msgpack

from claykiln.daemon.bench.load import LoadSpec
from claykiln.daemon.bench.measure import BenchOptions, abba, result, run_generator
from claykiln.daemon.bench.procs import DaemonProcess
from claykiln.daemon.bench.scenarios import DEAD_UPSTREAM, daemon_config

__all__ = ["HOSTILE_KINDS", "bench_abuse", "run_hostile"]

THROUGHPUT_TARGET: Final = 0.8
P99_TARGET_MS: Final = 10.0
HOSTILE_KINDS: Final = ("status-flood", "never-reading", "drip", "worst-frames")
FLOOD_BATCH: Final = 256  # status requests a flooder pipelines before reading
DRIP_EVERY: Final = 0.5  # seconds between two bytes of the drip-fed frame
WARM_UP: Final = 0.5  # seconds the hostile clients run before the honest ones are measured
LIMITS: Final = 'frame_timeout = "2s"\nreply_timeout = "2s"\n'  # cut-offs within a run
PACED_RATE: Final = 2000.0  # honest requests/s offered in the latency runs
ROUNDS: Final = 2  # A-B-B-A rounds per figure: this 2-core machine's speed swings within seconds


def _status_frames(count: int) -> bytes:
    return b"".join(msgpack.packb([0, n, "status", [{}]]) for n in range(count))


def _worst_frame() -> bytes:
    rows: list[list[list[int]]] = [[[] for _ in range(10_000)] for _ in range(104)]
    frame: bytes = msgpack.packb([0, 1, "hello", [{"a": rows}]])
    return frame


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(path)
    return sock


class _Hostile:
    """The four hostile clients' loops and counters; each loop runs until ``stop_at``."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path = path
        self.stop_at = time.monotonic() + seconds
        self.counts: dict[str, dict[str, int]] = {kind: {} for kind in HOSTILE_KINDS}

    def _count(self, kind: str, name: str, n: int = 1) -> None:
        self.counts[kind][name] = self.counts[kind].get(name, 0) + n

    def _running(self) -> bool:
        return time.monotonic() < self.stop_at

    def status_flood(self) -> None:
        batch = _status_frames(FLOOD_BATCH)
        unpacker = msgpack.Unpacker()
        while self._running():
            try:
                with _connect(self.path) as sock:
                    while self._running():
                        sock.sendall(batch)
                        got = 0
                        while got < FLOOD_BATCH:  # count whole replies, decoding nothing
                            data = sock.recv(262_144)
                            if not data:
                                raise ConnectionResetError
                            unpacker.feed(data)
                            got += _skip_all(unpacker)
                        self._count("status-flood", "replies", got)
            except OSError:
                self._count("status-flood", "reconnects")

    def never_reading(self) -> None:
        batch = _status_frames(64)
        while self._running():
            try:
                with _connect(self.path) as sock:
                    sock.settimeout(0.5)
                    while self._running():
                        try:
                            sock.sendall(batch)
                            self._count("never-reading", "requests_sent", 64)
                        except TimeoutError:
                            continue  # the daemon stopped reading us: keep it that way
            except OSError:
                self._count("never-reading", "cut_off")

    def drip(self) -> None:
        frame = msgpack.packb([0, 1, "hello", [{}]])
        while self._running():
            try:
                with _connect(self.path) as sock:
                    for byte in frame[:-1]:
                        if not self._running():
                            return
                        sock.sendall(bytes([byte]))
                        self._count("drip", "bytes")
                        time.sleep(DRIP_EVERY)
                    sock.settimeout(10.0)
                    if not sock.recv(65536):
                        raise ConnectionResetError
                    self._count("drip", "cut_off")
            except OSError:
                self._count("drip", "cut_off")

    def worst_frames(self) -> None:
        frame = _worst_frame()
        while self._running():
            try:
                with _connect(self.path) as sock:
                    try:
                        sock.sendall(frame)
                    except OSError:
                        pass  # closed mid-frame: the refusal is in our receive buffer
                    said = sock.recv(65536)
                    self._count("worst-frames", "refused" if said else "closed")
            except OSError:
                self._count("worst-frames", "errors")


def _skip_all(unpacker: msgpack.Unpacker) -> int:
    """Skip every whole value buffered in ``unpacker`` (no objects built); how many."""
    n = 0
    while True:
        try:
            unpacker.skip()
        except msgpack.OutOfData:
            return n
        n += 1


def run_hostile(path: str, seconds: float) -> dict[str, dict[str, int]]:
    """Run the four hostile clients against ``path`` for ``seconds``; their counts."""
    hostile = _Hostile(path, seconds)
    loops = (hostile.status_flood, hostile.never_reading, hostile.drip, hostile.worst_frames)
    threads = [threading.Thread(target=loop, daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 15.0)
    return hostile.counts


def _honest(
    options: BenchOptions, sock: str, pid: int, *, hostile: bool, mode: str = "connections"
) -> Any:
    def measure(seconds: float) -> dict[str, Any]:
        spec = LoadSpec(
            socket=sock,
            method="hello",
            mode=mode,
            concurrency=options.concurrency,
            seconds=seconds,
            max_requests=options.max_requests,
            rate=PACED_RATE,
        )
        if not hostile:
            return run_generator(spec, pid)
        argv = [sys.executable, "-m", "claykiln.daemon.bench.abuse", "--socket", sock]
        argv += ["--seconds", str(seconds + WARM_UP + 0.5)]
        clients = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(WARM_UP)
            figures = run_generator(spec, pid)
            out, err = clients.communicate(timeout=seconds + 60)
        finally:
            if clients.poll() is None:
                clients.kill()
                clients.communicate()
        if clients.returncode != 0:
            msg = f"hostile clients failed: {err.decode(errors='replace')[-2000:]}"
            raise RuntimeError(msg)
        figures["hostile"] = json.loads(out)
        return figures

    return measure


def bench_abuse(options: BenchOptions) -> dict[str, Any]:
    """Honest ``hello`` callers with and without the four hostile clients, A-B-B-A, closed
    loop (throughput) then paced (p99)."""
    root = options.workdir / "abuse"
    config = daemon_config(DEAD_UPSTREAM, concurrency=8)
    config = config.replace("[daemon.limits]\n", f"[daemon.limits]\n{LIMITS}", 1)
    with DaemonProcess(root / "daemon", config, {}) as d:
        d.start()
        sock = str(d.socket)
        alone, beside = abba(
            _honest(options, sock, d.pid, hostile=False),
            _honest(options, sock, d.pid, hostile=True),
            options.duration,
            rounds=ROUNDS,
        )
        paced_alone, paced_beside = abba(
            _honest(options, sock, d.pid, hostile=False, mode="paced"),
            _honest(options, sock, d.pid, hostile=True, mode="paced"),
            options.duration,
            rounds=ROUNDS,
        )
    ratio = beside["rps"] / alone["rps"] if alone["rps"] else 0.0
    p99 = paced_beside["p99_ms"]
    hostile: dict[str, dict[str, int]] = {}
    for run in beside["runs"] + paced_beside["runs"]:
        for kind, counts in run.get("hostile", {}).items():
            for name, n in counts.items():
                hostile.setdefault(kind, {})[name] = hostile.get(kind, {}).get(name, 0) + n
    meets = ratio >= THROUGHPUT_TARGET and p99 < P99_TARGET_MS
    notes = []
    for side in (beside, paced_beside):
        if set(side.get("codes", {})) - {"ok"}:
            notes.append(f"honest callers got errors: {side['codes']}")
    return result(
        "abuse",
        target=(
            f">= {THROUGHPUT_TARGET} of the throughput alone; paced p99 < {P99_TARGET_MS:g} ms "
            "beside them"
        ),
        ratio=ratio,
        meets_target=meets,
        headline=[
            (
                f"honest hello x{options.concurrency} (closed loop)",
                f"{beside['rps']:,.0f}/s beside 4 hostile clients vs {alone['rps']:,.0f}/s "
                f"alone = {ratio:.2f}; p99 {beside['p99_ms']:.2f} vs {alone['p99_ms']:.2f} ms",
            ),
            (
                f"honest p99, paced at {PACED_RATE:,.0f}/s",
                f"{p99:.2f} ms beside vs {paced_alone['p99_ms']:.2f} ms alone "
                f"(p50 {paced_beside['p50_ms']:.2f} vs {paced_alone['p50_ms']:.2f} ms)",
            ),
            ("hostile clients got", json.dumps(hostile, sort_keys=True)),
        ],
        details={
            "alone": alone,
            "beside": beside,
            "paced_alone": paced_alone,
            "paced_beside": paced_beside,
            "hostile": hostile,
            "limits": LIMITS,
        },
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m claykiln.daemon.bench.abuse``: run the hostile clients, print their counts."""
    p = argparse.ArgumentParser(prog="python -m claykiln.daemon.bench.abuse", description=__doc__)
    p.add_argument("--socket", required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    ns = p.parse_args(argv)
    print(json.dumps(run_hostile(ns.socket, ns.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
