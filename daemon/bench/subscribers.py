"""``kiln bench --scenario subscribe``: ``call`` throughput beside subscribers, against none.

The same ``call`` load (the ``call`` scenario's generator against nginx or the simulator) runs
A, B, B, A: alone, and beside two subscribers of every topic with ticks every 100 ms (ten times
the default): one reads everything, the other never reads at all (once its socket buffer is
full the daemon's buffer for it drops the oldest notifications; it is never waited for). On
both sides an admin client flips a breaker no call uses, up to ``EVENTS_PER_S`` times a second
(one round trip each), so there are events to deliver. The ratio is B's throughput over A's;
the target is that subscribers cost the callers nothing visible (>= 0.9). The reader's count of
notifications and the stalled one's losses (read when it finally drains its socket; none while
a run is too short to fill the kernel's socket buffer, ~200 KB) are reported beside.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgpack

from claykiln.daemon.bench.measure import BenchOptions, Measure, abba, result
from claykiln.daemon.bench.procs import DaemonProcess

# The call scenario's server and load, so both scenarios measure the same calls.
from claykiln.daemon.bench.scenarios import _http_server, _through_measure, daemon_config
from claykiln.daemon.client import Client

__all__ = ["SUBSCRIBE_TARGET", "bench_subscribe"]

SUBSCRIBE_TARGET: Final = 0.9
TICK_INTERVAL: Final = "100ms"
STALLED_RCVBUF: Final = 4096
READ_TIMEOUT: Final = 0.2
EVENTS_PER_S: Final = 200
SIDE: Final = "side"  # an upstream no operation uses: its breaker is flipped for events


class _Subscriber:
    """A raw msgpack-rpc subscriber (as any language would write one); ``reading`` drains its
    socket in a thread, else it never reads until ``drain``."""

    def __init__(self, path: Path, *, reading: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not reading:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        self.sock.connect(str(path))
        self.sock.sendall(msgpack.packb([0, 1, "subscribe", [{"buffer": 8}]]))
        self.unpacker = msgpack.Unpacker(raw=False)
        self.notifications = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_all, daemon=True) if reading else None
        if self._thread is not None:
            self._thread.start()

    def _feed(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for message in self.unpacker:
            if message[0] == 2:
                self.notifications += 1
                self.dropped = max(self.dropped, int(message[2][0].get("dropped", 0)))

    def _read_all(self) -> None:
        self.sock.settimeout(READ_TIMEOUT)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                self._feed(data)

    def drain(self) -> None:
        """Read what the socket holds now (the stalled subscriber, at the end)."""
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, OSError):
            while data := self.sock.recv(1 << 20):
                self._feed(data)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sock.close()


@contextlib.contextmanager
def _subscribed(path: Path, seen: list[dict[str, int]]) -> Iterator[None]:
    reader = _Subscriber(path, reading=True)
    stalled = _Subscriber(path, reading=False)
    try:
        yield
    finally:
        stalled.drain()
        seen.append(
            {
                "reader_notifications": reader.notifications,
                "stalled_notifications": stalled.notifications,
                "stalled_dropped": stalled.dropped,
            }
        )
        reader.close()
        stalled.close()


@contextlib.contextmanager
def _events(path: Path) -> Iterator[list[int]]:
    """Flip breaker ``SIDE`` open and closed ``EVENTS_PER_S`` times a second (a thread) for the
    block; yields the count made so far."""
    made = [0]
    stop = threading.Event()

    def flip() -> None:
        with Client(path) as client:
            while not stop.wait(1 / EVENTS_PER_S):
                client.breaker_force(SIDE, "open" if made[0] % 2 else "reset")
                made[0] += 1

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        thread.join()


def _with_events(calls: Measure, path: Path) -> Measure:
    def measure(seconds: float) -> dict[str, Any]:
        with _events(path) as made:
            figures = calls(seconds)
        figures["events"] = made[0]
        return figures

    return measure


def _beside_subscribers(calls: Measure, path: Path, seen: list[dict[str, int]]) -> Measure:
    def measure(seconds: float) -> dict[str, Any]:
        with _subscribed(path, seen):
            return calls(seconds)

    return measure


def bench_subscribe(options: BenchOptions) -> dict[str, Any]:
    """``call`` alone vs beside a reading and a stalled subscriber (see the module docstring)."""
    root = options.workdir / "subscribe"
    server, kind, notes = _http_server(root)
    seen: list[dict[str, int]] = []
    with server:
        server.start()
        config = daemon_config(server.url, concurrency=options.concurrency).replace(
            'grace_period = "5s"\n', f'grace_period = "5s"\ntick_interval = "{TICK_INTERVAL}"\n'
        )
        config += f'\n[upstreams.{SIDE}]\nbase_url = "{server.url}"\n'

        with DaemonProcess(root / "daemon", config, {}) as d:
            d.start()
            calls = _with_events(_through_measure(d.socket, d.pid, options), d.socket)
            alone, beside = abba(
                calls, _beside_subscribers(calls, d.socket, seen), options.duration
            )
    ratio = beside["rps"] / alone["rps"] if alone["rps"] else 0.0
    read = sum(s["reader_notifications"] for s in seen)
    dropped = max((s["stalled_dropped"] for s in seen), default=0)
    if set(beside["codes"]) - {"ok"} or set(alone["codes"]) - {"ok"}:
        notes.append(f"errors: alone {alone['codes']}, beside subscribers {beside['codes']}")
    return result(
        "subscribe",
        target=f">= {SUBSCRIBE_TARGET} of the calls/s without subscribers",
        ratio=ratio,
        meets_target=ratio >= SUBSCRIBE_TARGET,
        headline=[
            ("beside subscribers", f"{beside['rps']:,.0f} calls/s, p99 {beside['p99_ms']} ms"),
            ("alone", f"{alone['rps']:,.0f} calls/s, p99 {alone['p99_ms']} ms"),
            (
                "reading subscriber",
                f"{read} notifications (ticks every {TICK_INTERVAL}, {EVENTS_PER_S} events/s)",
            ),
            ("stalled subscriber", f"lost {dropped}, told in its notifications' dropped"),
            ("HTTP server", kind),
        ],
        details={"server": kind, "alone": alone, "beside": beside, "subscribers": seen},
        notes=notes,
    )
