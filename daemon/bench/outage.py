"""``kiln bench outage``: what a dead upstream sees from 64 hammering callers.

Both runs last ``duration`` against the Clay simulator (its own process) answering 503 to
everything (``Faults(outage="unavailable")``), and both count the requests the simulator saw:

- through the daemon: 64 callers hammer ``call`` (the load generator); the daemon retries
  (3 attempts, 50 ms..200 ms backoff) until its breaker (50 % of >= 10 calls in 10 s) opens;
  from then on only the half-open probes (one per ``reset_timeout``) should reach the upstream.
- a naive client: 64 workers, each call tried 3 times with 50 ms / 100 ms backoff, no breaker.

While the daemon run goes on, the breaker's state is polled (``breaker.list``) so the simulator's
count when the breaker was first seen open splits that run into before and after.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Final

import trio

from claykiln.daemon.bench.load import LoadSpec
from claykiln.daemon.bench.measure import BenchOptions, finish_generator, result, start_generator
from claykiln.daemon.bench.naive import naive_retry_load
from claykiln.daemon.bench.procs import DaemonProcess, SimulatorProcess
from claykiln.daemon.bench.scenarios import UPSTREAM, daemon_config
from claykiln.daemon.client._sync import Client

__all__ = ["bench_outage"]

API_KEY: Final = "bench-api-key-0123456789"
ME_PATH: Final = "/public/v0/me"
RESET_TIMEOUT: Final = 5.0  # seconds; the breaker lets one probe through this often
ATTEMPTS: Final = 3
NAIVE_BACKOFF: Final = (0.05, 0.1)
POLL_INTERVAL: Final = 0.01
OPEN_STATES: Final = frozenset({"open", "half_open", "forced_open"})


def _breaker_state(client: Client) -> str | None:
    for view in client.request("breaker.list", None, timeout=5):
        if view.get("key") == UPSTREAM:
            return str(view.get("state"))
    return None


def _through_daemon(sim: SimulatorProcess, options: BenchOptions) -> dict[str, Any]:
    config = daemon_config(
        sim.url,
        concurrency=options.concurrency,
        path=ME_PATH,
        auth_credential="clay-api-key",
        attempts=ATTEMPTS,
        reset_timeout=f"{RESET_TIMEOUT}s",
    )
    root = options.workdir / "outage"
    with DaemonProcess(root / "daemon", config, {"clay-api-key": API_KEY}) as d:
        d.start()
        sim.control("POST", "reset")
        sim.control("POST", "faults", {"outage": "unavailable"})
        spec = LoadSpec(
            socket=str(d.socket),
            method="call",
            args={"operation": "ping"},
            concurrency=options.concurrency,
            seconds=options.duration,
            max_requests=options.max_requests,
        )
        at_open: int | None = None
        opened_after: float | None = None
        started = time.monotonic()
        generator = start_generator(spec)
        try:
            with Client(d.socket, timeout=10) as client:
                while generator.poll() is None:
                    if at_open is None and _breaker_state(client) in OPEN_STATES:
                        at_open = sim.clay_requests()
                        opened_after = time.monotonic() - started
                    time.sleep(POLL_INTERVAL)
        finally:
            load = finish_generator(generator, spec)
        total = sim.clay_requests()
        half_opens = len(d.events("breaker.half_open"))
        opened = len(d.events("breaker.opened"))
    after_open = None if at_open is None else total - at_open
    return {
        "upstream_requests": total,
        "before_open": at_open,
        "after_open": after_open,
        "opened_after_s": None if opened_after is None else round(opened_after, 3),
        "breaker_opened_events": opened,
        "half_open_events": half_opens,
        "reset_timeout_s": RESET_TIMEOUT,
        "caller_replies": load["requests"],
        "caller_codes": load["codes"],
        "callers_rps": load["rps"],
        "callers_p99_ms": load["p99_ms"],
    }


def _naive(sim: SimulatorProcess, options: BenchOptions) -> dict[str, Any]:
    sim.control("POST", "reset")
    sim.control("POST", "faults", {"outage": "unavailable"})
    port = int(sim.url.rsplit(":", 1)[1])
    figures = trio.run(
        functools.partial(
            naive_retry_load,
            "127.0.0.1",
            port,
            ME_PATH,
            headers={"clay-api-key": API_KEY},
            concurrency=options.concurrency,
            seconds=options.duration,
            attempts=ATTEMPTS,
            backoff=NAIVE_BACKOFF,
            max_requests=options.max_requests,
        )
    )
    figures["upstream_requests"] = sim.clay_requests()
    return figures


def bench_outage(options: BenchOptions) -> dict[str, Any]:
    """Requests reaching a dead upstream: through the daemon vs a naive retry loop."""
    sim_args = ("--api-key", API_KEY, "--public-rate", "1000000", "--public-burst", "1000000")
    with SimulatorProcess(options.workdir / "outage" / "simulator", *sim_args) as sim:
        sim.start()
        daemon = _through_daemon(sim, options)
        naive = _naive(sim, options)
    through, direct = daemon["upstream_requests"], naive["upstream_requests"]
    after = daemon["after_open"]
    # In-flight calls when the breaker opened, plus the polling lag, may still land after it.
    allowed = daemon["half_open_events"] + options.concurrency
    meets = after is not None and after <= allowed
    notes = [
        f"breaker: 50% of >= 10 calls in 10 s opens it; reset_timeout {RESET_TIMEOUT:g} s, "
        "1 probe; daemon and naive client both make 3 attempts per call",
    ]
    if after is None:
        notes.append("the breaker was never seen open during the run")
    return result(
        "outage",
        target="after the breaker opens only its probes reach the upstream",
        ratio=direct / through if through else None,
        meets_target=meets,
        headline=[
            ("through the daemon", f"{through:,} upstream requests in {options.duration:g} s"),
            ("  before / after open", f"{daemon['before_open']} / {after}"),
            ("  half-open probes", f"{daemon['half_open_events']}"),
            ("naive retry loop", f"{direct:,} upstream requests in {options.duration:g} s"),
            ("naive / daemon", f"{direct / through:,.1f}x" if through else "n/a"),
        ],
        details={"daemon": daemon, "naive": naive},
        notes=notes,
    )
