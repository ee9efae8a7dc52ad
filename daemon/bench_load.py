"""The lean load generator of ``kiln bench``: raw Unix sockets, msgpack, one epoll loop.

It runs in its own process (``python -m claykiln.daemon.bench_load ...`` prints one JSON object
on stdout) so it never shares a GIL with the server it measures, and it uses no trio and no
client library, so it costs the server's core as little as a Python client can.

Modes (the same request frame every time, ``[0, msgid, method, [args]]``):

- ``connections``: ``concurrency`` connections, one request in flight on each (closed loop: the
  next request goes out when the reply arrives);
- ``pipelined``: one connection keeping ``concurrency`` requests in flight (every reply read is
  answered by a new request; the replies of one read go out together in one ``send``).

Bounds: no request is issued after ``seconds`` nor beyond ``max_requests`` in all; replies still
outstanding then get ``DRAIN_GRACE`` seconds, after which they are counted as ``lost``. A
connection the server closes counts its outstanding requests as lost and is not reopened.
"""

from __future__ import annotations

import argparse
import json
import math
import selectors
import socket
import sys
import time
from collections import Counter
from typing import Any, Final

import attrs
import msgpack

__all__ = ["MODES", "LoadSpec", "percentile", "run_load"]

MODES: Final = ("connections", "pipelined")
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

    def argv(self) -> list[str]:
        """The command line that runs this spec in a fresh interpreter."""
        return [
            sys.executable,
            "-m",
            "claykiln.daemon.bench_load",
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
        self.next_id = 0
        self.issued = 0
        self.outstanding = 0
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.notifications = 0
        self.lost = 0
        self.stop_at = 0.0
        self.last_reply = 0.0

    def issue(self, conn: _Conn, now: float, out: list[bytes]) -> None:
        """Append one request frame to ``out`` if both bounds allow it."""
        if now >= self.stop_at or self.issued >= self.spec.max_requests:
            return
        self.next_id = (self.next_id + 1) % MSGID_LIMIT
        # A fixed-width uint32 msgid (0xce) keeps the frame a constant template.
        out.append(b"\x94\x00\xce" + self.next_id.to_bytes(4, "big") + self.tail)
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
            error = frame[2]
            self.codes[str(error.get("code")) if isinstance(error, dict) else "ok"] += 1
            self.last_reply = now
            self.issue(conn, now, out)

    def drop(self, conn: _Conn) -> None:
        self.lost += len(conn.pending)
        self.outstanding -= len(conn.pending)
        conn.pending.clear()


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run ``spec`` against the server at ``spec.socket`` in this process; return the figures.

    ``requests`` (replies of any kind), ``codes`` (count by error code, ``ok`` for results),
    ``rps`` (replies per second between the first send and the last reply), latency percentiles
    in ms, ``issued``, ``lost``, ``notifications`` and ``cpu_s`` (this process's CPU time).
    Raises ``OSError`` when the server cannot be reached.
    """
    conns_n, depth = (
        (spec.concurrency, 1) if spec.mode == "connections" else (1, spec.concurrency)
    )
    conns = [_Conn(spec.socket) for _ in range(conns_n)]
    run = _Run(spec)
    cpu_before = time.process_time()
    selector = selectors.DefaultSelector()
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
        while run.outstanding > 0:
            now = time.perf_counter()
            if now >= hard_stop:
                break
            for key, _events in selector.select(timeout=min(1.0, hard_stop - now)):
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
        "notifications": run.notifications,
        "codes": dict(run.codes),
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else 0.0,
        "cpu_s": round(time.process_time() - cpu_before, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m claykiln.daemon.bench_load``: run one spec, print its figures as JSON."""
    p = argparse.ArgumentParser(prog="python -m claykiln.daemon.bench_load", description=__doc__)
    p.add_argument("--socket", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--args-json", default="{}", help="the request's named arguments as JSON")
    p.add_argument("--mode", choices=MODES, default="connections")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    ns = p.parse_args(argv)
    spec = LoadSpec(
        socket=ns.socket,
        method=ns.method,
        args=json.loads(ns.args_json),
        mode=ns.mode,
        concurrency=ns.concurrency,
        seconds=ns.seconds,
        max_requests=ns.max_requests,
    )
    print(json.dumps(run_load(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
