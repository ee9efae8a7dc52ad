"""The lean load generator of ``kiln bench``: raw Unix sockets, msgpack, one epoll loop.

It runs in its own process (``python -m claykiln.daemon.bench.load ...`` prints one JSON object
on stdout) so it never shares a GIL with the server it measures, and it uses no trio and no
client library, so it costs the server's core as little as a Python client can.

Modes (the same request frame every time, ``[0, msgid, method, [args]]``):

- ``connections``: ``concurrency`` connections, one request in flight on each (closed loop: the
  next request goes out when the reply arrives);
- ``pipelined``: one connection keeping ``concurrency`` requests in flight (every reply read is
  answered by a new request; the replies of one read go out together in one ``send``);
- ``paced``: open loop, ``concurrency`` connections, requests sent on a schedule of ``rate``
  per second in all (round robin over the connections, at most ``PACED_DEPTH`` in flight on
  one; a slot that finds its connection full is counted ``behind`` and skipped). Latency then
  shows the service time at that offered load, not the queueing a closed loop builds up (with
  N closed-loop callers the mean latency is N / throughput, whatever the server does).

With ``unique_arg`` set, every request carries that argument with a value of its own (a run
nonce and a counter), e.g. a fresh ``idempotency_key`` per call; the frame is then packed per
request.

Bounds: no request is issued after ``seconds`` nor beyond ``max_requests`` in all; replies still
outstanding then get ``DRAIN_GRACE`` seconds, after which they are counted as ``lost``. A
connection the server closes counts its outstanding requests as lost and is not reopened.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import selectors
import socket
import sys
import time
from collections import Counter
from typing import Any, Final

import attrs
import msgpack

__all__ = ["MODES", "LoadSpec", "percentile", "run_load"]

MODES: Final = ("connections", "pipelined", "paced")
PACED_DEPTH: Final = 64  # requests in flight on one connection in paced mode
PACED_TICK: Final = 0.0002  # most seconds between schedule checks in paced mode (1/rate if less)
DRAIN_GRACE: Final = 5.0  # seconds outstanding replies get after the run time is up
RECV_SIZE: Final = 262_144
CONNECT_TIMEOUT: Final = 5.0
MSGID_LIMIT: Final = 2**32


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = min(max(1, math.ceil(fraction * len(ordered))), len(ordered))
    return ordered[rank - 1]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        msg = f"{attr.name} must be > 0, got {value!r}"
        raise ValueError(msg)


def _mode(_inst: object, _attr: attrs.Attribute[Any], value: str) -> None:
    if value not in MODES:
        msg = f"mode must be one of {', '.join(MODES)}, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class LoadSpec:
    """One load run: where, what request, how (mode, concurrency) and its two bounds."""

    socket: str
    method: str
    args: dict[str, Any] = attrs.field(factory=dict)
    mode: str = attrs.field(default="connections", validator=_mode)
    concurrency: int = attrs.field(default=64, validator=_positive)
    seconds: float = attrs.field(default=5.0, validator=_positive)
    max_requests: int = attrs.field(default=1_000_000, validator=_positive)
    rate: float = attrs.field(default=1000.0, validator=_positive)  # paced mode only
    unique_arg: str = ""  # an argument given a fresh value per request ("": none)

    def argv(self) -> list[str]:
        """The command line that runs this spec in a fresh interpreter."""
        return [
            sys.executable,
            "-m",
            "claykiln.daemon.bench.load",
            "--socket",
            self.socket,
            "--method",
            self.method,
            "--args-json",
            json.dumps(self.args),
            "--mode",
            self.mode,
            "--concurrency",
            str(self.concurrency),
            "--seconds",
            str(self.seconds),
            "--max-requests",
            str(self.max_requests),
            "--rate",
            str(self.rate),
            "--unique-arg",
            self.unique_arg,
        ]


class _Conn:
    """One socket, its decoder and the send time of each request in flight on it."""

    __slots__ = ("pending", "sock", "unpacker")

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(CONNECT_TIMEOUT)
        self.sock.connect(path)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.pending: dict[int, float] = {}


class _Run:
    """The state of one run; ``issue`` makes frames, ``settle`` books replies."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.tail = msgpack.packb(spec.method) + msgpack.packb([spec.args])
        self.head = msgpack.packb(spec.method)
        self.nonce = f"{os.getpid()}-{time.time_ns()}-"
        self.next_id = 0
        self.issued = 0
        self.outstanding = 0
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.notifications = 0
        self.lost = 0
        self.stop_at = 0.0
        self.last_reply = 0.0
        self.paced = spec.mode == "paced"
        self.scheduled = 0
        self.behind = 0

    def issue(self, conn: _Conn, now: float, out: list[bytes]) -> None:
        """Append one request frame to ``out`` if both bounds allow it."""
        if now >= self.stop_at or self.issued >= self.spec.max_requests:
            return
        self.next_id = (self.next_id + 1) % MSGID_LIMIT
        # A fixed-width uint32 msgid (0xce) keeps the frame a constant template.
        tail = self.tail
        if self.spec.unique_arg:
            args = dict(self.spec.args)
            args[self.spec.unique_arg] = f"{self.nonce}{self.issued}"
            tail = self.head + msgpack.packb([args])
        out.append(b"\x94\x00\xce" + self.next_id.to_bytes(4, "big") + tail)
        conn.pending[self.next_id] = now
        self.issued += 1
        self.outstanding += 1

    def settle(self, conn: _Conn, now: float, out: list[bytes]) -> None:
        """Book every complete reply buffered on ``conn``; issue one request per reply."""
        for frame in conn.unpacker:
            if not isinstance(frame, list) or len(frame) != 4 or frame[0] != 1:
                self.notifications += 1
                continue
            sent = conn.pending.pop(frame[1], None)
            if sent is None:
                continue
            self.outstanding -= 1
            self.latencies.append(now - sent)
            error, reply = frame[2], frame[3]
            self.codes[str(error.get("code")) if isinstance(error, dict) else "ok"] += 1
            if isinstance(reply, dict) and "status" in reply:
                self.statuses[str(reply["status"])] += 1
            self.last_reply = now
            if not self.paced:
                self.issue(conn, now, out)

    def pace(self, conns: list[_Conn], start: float, now: float) -> None:
        """Paced mode: send every request the schedule says is due by ``now``."""
        due = min(int((now - start) * self.spec.rate) + 1, self.spec.max_requests)
        if now >= self.stop_at or self.scheduled >= due:
            return
        batches: dict[int, list[bytes]] = {}
        while self.scheduled < due:
            index = self.scheduled % len(conns)
            self.scheduled += 1
            conn = conns[index]
            if len(conn.pending) >= PACED_DEPTH:
                self.behind += 1
                continue
            self.issue(conn, now, batches.setdefault(index, []))
        for index, frames in batches.items():
            if frames:
                conns[index].sock.sendall(b"".join(frames))

    def done(self, now: float) -> bool:
        """Nothing in flight and (closed loop, or paced with the schedule over)."""
        if self.outstanding > 0:
            return False
        return not self.paced or now >= self.stop_at or self.scheduled >= self.spec.max_requests

    def drop(self, conn: _Conn) -> None:
        self.lost += len(conn.pending)
        self.outstanding -= len(conn.pending)
        conn.pending.clear()


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run ``spec`` against the server at ``spec.socket`` in this process; return the figures.

    ``requests`` (replies of any kind), ``codes`` (count by error code, ``ok`` for results),
    ``statuses`` (count by the ``status`` of results that have one, as ``call`` results do),
    ``rps`` (replies per second between the first send and the last reply), latency percentiles
    in ms, ``issued``, ``lost``, ``behind`` (paced slots skipped), ``notifications`` and
    ``cpu_s`` (this process's CPU time).
    Raises ``OSError`` when the server cannot be reached.
    """
    conns_n, depth = {
        "connections": (spec.concurrency, 1),
        "pipelined": (1, spec.concurrency),
        "paced": (spec.concurrency, 0),
    }[spec.mode]
    conns = [_Conn(spec.socket) for _ in range(conns_n)]
    run = _Run(spec)
    cpu_before = time.process_time()
    # epoll's timeout has millisecond resolution, which would send the paced schedule in bursts
    # of rate/1000 requests; select() sleeps in microseconds (and 64 sockets are well in range).
    selector = selectors.SelectSelector() if run.paced else selectors.DefaultSelector()
    tick = min(PACED_TICK, 1.0 / spec.rate)  # paced: about one request per wake-up
    start = time.perf_counter()
    try:
        for conn in conns:
            conn.sock.settimeout(None)
            selector.register(conn.sock, selectors.EVENT_READ, conn)
        run.stop_at = start + spec.seconds
        run.last_reply = start
        hard_stop = run.stop_at + DRAIN_GRACE
        for conn in conns:
            out: list[bytes] = []
            for _ in range(depth):
                run.issue(conn, start, out)
            if out:
                conn.sock.sendall(b"".join(out))
        while True:
            now = time.perf_counter()
            if run.paced:
                run.pace(conns, start, now)
            if now >= hard_stop or run.done(now):
                break
            wait = tick if run.paced and now < run.stop_at else 1.0
            for key, _events in selector.select(timeout=min(wait, hard_stop - now)):
                conn = key.data
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(conn.sock)
                    run.drop(conn)
                    continue
                conn.unpacker.feed(data)
                out = []
                run.settle(conn, time.perf_counter(), out)
                if out:
                    conn.sock.sendall(b"".join(out))
        run.lost += run.outstanding
    finally:
        selector.close()
        for conn in conns:
            conn.sock.close()
    elapsed = run.last_reply - start
    latencies = sorted(run.latencies)
    return {
        "mode": spec.mode,
        "method": spec.method,
        "concurrency": spec.concurrency,
        "requests": len(latencies),
        "issued": run.issued,
        "lost": run.lost,
        "behind": run.behind,
        "notifications": run.notifications,
        "codes": dict(run.codes),
        "statuses": dict(run.statuses),
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else 0.0,
        "cpu_s": round(time.process_time() - cpu_before, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m claykiln.daemon.bench.load``: run one spec, print its figures as JSON."""
    p = argparse.ArgumentParser(prog="python -m claykiln.daemon.bench.load", description=__doc__)
    p.add_argument("--socket", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--args-json", default="{}", help="the request's named arguments as JSON")
    p.add_argument("--mode", choices=MODES, default="connections")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s in paced mode")
    p.add_argument("--unique-arg", default="", help="an argument given a fresh value per request")
    ns = p.parse_args(argv)
    spec = LoadSpec(
        socket=ns.socket,
        method=ns.method,
        args=json.loads(ns.args_json),
        mode=ns.mode,
        concurrency=ns.concurrency,
        seconds=ns.seconds,
        max_requests=ns.max_requests,
        rate=ns.rate,
        unique_arg=ns.unique_arg,
    )
    # A bounded run that makes little cyclic garbage: a collector pause here would be measured
    # as the server's latency, so the generator does not collect while it measures.
    gc.collect()
    gc.freeze()
    gc.disable()
    print(json.dumps(run_load(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
