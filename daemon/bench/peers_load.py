"""One peer process of ``kiln bench --scenario outage-peers``: a few caller threads, each
calling a GET operation on a fixed period, straight at the upstream with pybreaker + tenacity
(``--via direct``, ``peers_direct.py``) or through the daemon with the client library
(``--via daemon``, one ``Client`` per caller, as an app with one client per thread has).

    python -m claykiln.daemon.bench.peers_load --via direct --target URL --slot 0 --of 32 ...
    python -m claykiln.daemon.bench.peers_load --via daemon --target SOCKET --operation me ...

Handshake: once set up (daemon clients connected), the process prints ``READY`` and reads one
line ``GO <start> <stop>`` on stdin: times on the host's ``CLOCK_MONOTONIC``, which every
process shares, so the bench can line its phases up with every process's calls. Later lines
``STOP <stop>`` move the stop time (the bench ends a run whose length it learns as it goes).

Schedule: the callers of the whole bench are numbered ``0 .. of-1`` (this process's are
``slot ..``) and caller ``k`` first calls at ``start + k / of * interval``, spreading the calls
evenly; then every ``interval``. A call that overruns its period is followed at once by the
next, without catching up on the periods it missed. No call starts at or after ``stop``; calls
in flight then finish (bounded by the client timeouts).

Output: one JSON object on stdout, ``{"slot", "via", "callers", "calls", "upstream"?}``:
``calls`` is ``[[start, end, code], ...]`` ordered by start (monotonic seconds; code ``ok`` or
an error code, ``peers_direct.py`` for the direct side's), ``upstream`` (direct only) counts
what this process sent to the upstream.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["CallRecord", "StopTime", "main", "run_callers"]

CallRecord = tuple[float, float, str]
Caller = tuple[Callable[[], str], Callable[[], None]]

JOIN_SLACK: Final = 60.0  # seconds a caller may take past ``stop`` (its client's own timeout)
READY_LINE: Final = "READY"


class StopTime:
    """The moment no call may start any more; the stdin reader moves it (a float's assignment
    is atomic, and a caller reads it before each call)."""

    def __init__(self, at: float) -> None:
        self.at = at


def _caller_loop(
    call: Callable[[], str], first: float, interval: float, stop: StopTime, out: list[CallRecord]
) -> None:
    due = first
    while True:
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        began = time.monotonic()
        if began >= stop.at:
            return
        code = call()
        ended = time.monotonic()
        out.append((began, ended, code))
        due = max(due + interval, ended)


def run_callers(
    callers: list[Caller], *, slot: int, of: int, interval: float, start: float, stop: StopTime
) -> list[CallRecord]:
    """Run each caller on the schedule of the module doc until ``stop``; every call made, by
    start time. The callers are closed at the end; a caller still running ``JOIN_SLACK`` after
    ``stop`` is left behind (its calls so far are kept)."""
    records: list[list[CallRecord]] = [[] for _ in callers]
    threads = []
    for k, (call, _close) in enumerate(callers):
        first = start + (slot + k) / of * interval
        thread = threading.Thread(
            target=_caller_loop,
            args=(call, first, interval, stop, records[k]),
            name=f"caller-{slot + k}",
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    for thread in threads:
        while thread.is_alive() and time.monotonic() < stop.at + JOIN_SLACK:
            thread.join(max(0.01, min(1.0, stop.at + JOIN_SLACK - time.monotonic())))
    for _call, close in callers:
        close()
    return sorted(record for per_caller in records for record in list(per_caller))


def _read_stops(stop: StopTime) -> None:
    """Apply each ``STOP <time>`` line on stdin until it closes."""
    for line in sys.stdin:
        words = line.split()
        if len(words) == 2 and words[0] == "STOP":
            stop.at = float(words[1])


def _daemon_callers(socket: str, operation: str, count: int, timeout: float) -> list[Caller]:
    from claykiln.daemon.client import Client, KilnError

    def one() -> Caller:
        client = Client(socket, timeout=timeout)
        client.hello()  # connected before the clock starts

        def call() -> str:
            try:
                client.call(operation)
            except KilnError as exc:
                return exc.code
            return "ok"

        return call, client.close

    return [one() for _ in range(count)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m claykiln.daemon.bench.peers_load")
    p.add_argument("--via", choices=("direct", "daemon"), required=True)
    p.add_argument("--target", required=True, help="the upstream URL, or the daemon's socket")
    p.add_argument("--operation", default="me", help="the daemon operation (--via daemon)")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    p.add_argument("--callers", type=int, default=4)
    p.add_argument("--slot", type=int, default=0, help="this process's first caller number")
    p.add_argument("--of", type=int, default=4, help="callers in the whole bench")
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=30.0, help="client/request timeout (s)")
    p.add_argument("--fail-max", type=int, default=5)
    p.add_argument("--reset-timeout", type=float, default=30.0)
    p.add_argument("--attempts", type=int, default=3)
    p.add_argument("--backoff-base", type=float, default=0.25)
    p.add_argument("--backoff-cap", type=float, default=10.0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Set up, print READY, wait for GO, run the callers, print the JSON result."""
    ns = _parser().parse_args(argv)
    upstream: Callable[[], dict[str, Any]] | None = None
    if ns.via == "direct":
        from claykiln.daemon.bench.peers_direct import DirectPeer, PeerPolicy

        headers = dict(h.split(":", 1) for h in ns.header)
        policy = PeerPolicy(
            fail_max=ns.fail_max,
            reset_timeout=ns.reset_timeout,
            attempts=ns.attempts,
            backoff_base=ns.backoff_base,
            backoff_cap=ns.backoff_cap,
            request_timeout=ns.timeout,
        )
        peer = DirectPeer(ns.target, headers, policy)
        callers = [peer.caller() for _ in range(ns.callers)]
        upstream = peer.upstream_figures
    else:
        callers = _daemon_callers(ns.target, ns.operation, ns.callers, ns.timeout)
    print(READY_LINE, flush=True)
    go = sys.stdin.readline().split()
    if len(go) != 3 or go[0] != "GO":
        print(f"expected 'GO <start> <stop>' on stdin, got {go!r}", file=sys.stderr)
        return 2
    start, stop = float(go[1]), StopTime(float(go[2]))
    threading.Thread(target=_read_stops, args=(stop,), daemon=True).start()
    calls = run_callers(
        callers, slot=ns.slot, of=ns.of, interval=ns.interval, start=start, stop=stop
    )
    out: dict[str, Any] = {
        "slot": ns.slot,
        "via": ns.via,
        "callers": ns.callers,
        "calls": [[round(a, 6), round(b, 6), code] for a, b, code in calls],
    }
    if upstream is not None:
        out["upstream"] = upstream()
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
