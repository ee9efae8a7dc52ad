"""``kiln bench`` scenarios of the durable outbox (docs/performance.md, "The outbox").

- ``submit``: durable ``submit`` acknowledgements at ``concurrency`` connections (the load
  generator process, a fresh idempotency key per submit, jobs due in a day so none runs), one
  daemon with fsync group commit against one with ``sync = false``, A-B-B-A in the same run;
  and, for reference, jobs per second through ``submit_many`` of 20 rows. Target: >= 10k/s
  durable single submits.
- ``drain``: ``burst + rate * 2 * duration`` jobs queued, then drained through the gate into
  the simulator paced at the same rate (Clay's 10/s burst 20, and 100/s): the steady arrival
  rate at the simulator over the configured one, and the 429s. Target: within 5 %, no 429.
- ``outbox-scale``: a daemon started on 1,000 waiting jobs and on 1,000,000 (seeded through the
  storage layer, plus 10 % dead): time to READY, RSS, and ``dlq.list`` pages. Target: start-up
  and RSS within 2x of the small store's.
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Any, Final

from claykiln.daemon.bench.load import LoadSpec
from claykiln.daemon.bench.measure import BenchOptions, abba, result, run_generator
from claykiln.daemon.bench.outbox_seed import seed_jobs
from claykiln.daemon.bench.procs import DaemonProcess, SimulatorProcess
from claykiln.daemon.bench.scenarios import DEAD_UPSTREAM
from claykiln.daemon.client._sync import Client

__all__ = ["bench_drain", "bench_outbox_scale", "bench_submit", "outbox_config", "scale_run"]

SUBMIT_TARGET: Final = 10_000
BATCH_ITEMS: Final = 20
DRAIN_TOLERANCE: Final = 0.05
DRAIN_RATES: Final = ((10.0, 20), (100.0, 20))
SCALE_SIZES: Final = ((1_000, 100), (1_000_000, 100_000))
SCALE_TARGET: Final = 2.0
ROW: Final = {"email": "ada@example.com", "name": "Ada Lovelace", "company": "Analytical"}


def outbox_config(
    base_url: str,
    *,
    sync: bool = True,
    concurrency: int = 64,
    rate: str = "",
    jobs: int = 16,
    log_level: str = "warning",
) -> str:
    """A daemon with push_row (Clay's webhook rules, derived keys) on upstream ``clay`` at
    ``base_url``; ``rate``: its gate (``"per_second = 10, burst = 20"``), none when empty."""
    limits = max(256, concurrency + 16)
    gate = f"rate = {{ {rate} }}\n" if rate else ""
    return f"""
[daemon]
log_format = "json"
log_level = "{log_level}"
grace_period = "5s"

[daemon.limits]
max_connections = {limits}
max_in_flight = {limits}

[daemon.storage]
sync = {"true" if sync else "false"}

[daemon.outbox]
concurrency = {jobs}

[upstreams.clay]
base_url = "{base_url}"
{gate}retry = {{ attempts = 1, base = "50ms", cap = "200ms" }}
timeouts = {{ connect = "2s", request = "10s", upload = "10s", long_poll = "10s" }}

[lanes.bulk]
concurrency = 16
queue = 1000
max_wait = "30s"

[operations.push_row]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{{webhook_id}}"
lane = "bulk"
idempotency = "derive"
webhook = {{ max_row = "100KB", lifetime_rows = 1000000000 }}
[operations.push_plain]
upstream = "clay"
method = "POST"
path = "/v3/sources/webhook/{{webhook_id}}"
lane = "bulk"
webhook = {{ max_row = "100KB", lifetime_rows = 1000000000 }}
"""


# ---- submit ---------------------------------------------------------------------------------


def _submit_measure(d: DaemonProcess, options: BenchOptions, not_before: float) -> Any:
    def measure(seconds: float) -> dict[str, Any]:
        with Client(d.socket, timeout=30) as client:
            before = client.status()["storage"]["transactions"]
        spec = LoadSpec(
            socket=str(d.socket),
            method="submit",
            args={
                "operation": "push_row",
                "path_params": {"webhook_id": "bench"},
                "json": ROW,
                "not_before": not_before,
            },
            concurrency=options.concurrency,
            seconds=seconds,
            max_requests=options.max_requests,
            unique_arg="idempotency_key",
        )
        figures = run_generator(spec, d.pid)
        with Client(d.socket, timeout=30) as client:
            figures["transactions"] = client.status()["storage"]["transactions"] - before
        return figures

    return measure


def _batch_measure(d: DaemonProcess, options: BenchOptions, not_before: float) -> Any:
    """``submit_many`` of ``BATCH_ITEMS`` rows per request (push_plain: each its own job)."""

    def measure(seconds: float) -> dict[str, Any]:
        item = {
            "operation": "push_plain",
            "path_params": {"webhook_id": "bench"},
            "json": ROW,
            "not_before": not_before,
        }
        spec = LoadSpec(
            socket=str(d.socket),
            method="submit_many",
            args={"items": [item] * BATCH_ITEMS},
            concurrency=options.concurrency,
            seconds=seconds,
            max_requests=max(1, options.max_requests // BATCH_ITEMS),
        )
        figures = run_generator(spec, d.pid)
        figures["jobs_per_s"] = round(figures["rps"] * BATCH_ITEMS, 1)
        return figures

    return measure


def bench_submit(options: BenchOptions) -> dict[str, Any]:
    """Durable submit acknowledgements, fsync group commit vs sync off, same run."""
    root = options.workdir / "submit"
    not_before = time.time() + 86_400
    with (
        DaemonProcess(root / "sync", outbox_config(DEAD_UPSTREAM), {}) as durable,
        DaemonProcess(root / "nosync", outbox_config(DEAD_UPSTREAM, sync=False), {}) as fast,
    ):
        durable.start()
        fast.start()
        synced, unsynced = abba(
            _submit_measure(durable, options, not_before),
            _submit_measure(fast, options, not_before),
            options.duration,
        )
        batched = _batch_measure(durable, options, not_before)(options.duration / 2)
    for side in (synced, unsynced):
        side["transactions"] = sum(run.get("transactions", 0) for run in side["runs"])
    ratio = synced["rps"] / unsynced["rps"] if unsynced["rps"] else 0.0
    per_txn = synced["requests"] / synced["transactions"] if synced["transactions"] else 0.0
    notes = []
    for name, side in (("fsync", synced), ("sync off", unsynced)):
        if set(side["codes"]) - {"ok"}:
            notes.append(f"{name}: not every submit was acknowledged: {side['codes']}")
    return result(
        "submit",
        target=f">= {SUBMIT_TARGET:,} durable acknowledgements/s at {options.concurrency} conns",
        ratio=ratio,
        meets_target=synced["rps"] >= SUBMIT_TARGET and not notes,
        headline=[
            (
                f"fsync group commit (x{options.concurrency})",
                f"{synced['rps']:,.0f} acks/s, p50 {synced['p50_ms']} ms, "
                f"p99 {synced['p99_ms']} ms",
            ),
            (
                "sync = false",
                f"{unsynced['rps']:,.0f} acks/s, p50 {unsynced['p50_ms']} ms, "
                f"p99 {unsynced['p99_ms']} ms",
            ),
            ("durable / sync off", f"{ratio:.2f}"),
            ("submits per fsynced transaction", f"{per_txn:.1f}"),
            (
                f"submit_many x{BATCH_ITEMS} (fsync, x{options.concurrency})",
                f"{batched['jobs_per_s']:,.0f} jobs/s durable ({batched['rps']:,.0f} requests/s, "
                f"p99 {batched['p99_ms']} ms)",
            ),
            ("daemon CPU per submit", f"{synced.get('server_cpu_us')} us (fsync)"),
        ],
        details={
            "fsync": synced,
            "sync_off": unsynced,
            "submits_per_transaction": per_txn,
            "submit_many": batched,
        },
        notes=notes,
    )


# ---- drain ----------------------------------------------------------------------------------


def _drain_once(root: Path, rate: float, burst: int, seconds: float) -> dict[str, Any]:
    """Queue ``burst + rate * seconds`` jobs due in 2 s, let them drain, read the arrivals."""
    count = burst + int(rate * seconds)
    sim_args = ("--webhook-rate", f"{rate:g}", "--webhook-burst", str(burst))
    with SimulatorProcess(root / "sim", *sim_args) as sim:
        sim.start()
        config = outbox_config(sim.url, rate=f"per_second = {rate:g}, burst = {burst}")
        with DaemonProcess(root / "daemon", config, {}) as d:
            d.start()
            due = time.time() + 2.0
            with Client(d.socket, timeout=60) as client:
                for start in range(0, count, 1000):
                    items = [
                        {
                            "operation": "push_row",
                            "path_params": {"webhook_id": "drain"},
                            "json": {"n": n, **ROW},
                            "not_before": due,
                        }
                        for n in range(start, min(count, start + 1000))
                    ]
                    client.submit_many(items)
            deadline = time.monotonic() + 30 + count / rate * 2
            while sim.control("GET", "stats")["webhooks"].get("drain", {}).get("stored", 0) < count:
                if time.monotonic() > deadline:
                    msg = f"the drain did not finish within {deadline:.0f} s"
                    raise RuntimeError(msg)
                time.sleep(0.1)
            rows = sim.control("GET", f"webhooks/drain/rows?limit={count}")["rows"]
            stats = sim.control("GET", "stats")
    arrivals = sorted(row["received_at"] for row in rows)
    steady = arrivals[burst:]
    measured = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    gaps = [b - a for a, b in itertools.pairwise(steady)]
    return {
        "configured": rate,
        "burst": burst,
        "jobs": count,
        "measured": round(measured, 3),
        "ratio": round(measured / rate, 4),
        "too_many_requests": stats["responses"].get("webhook", {}).get("429", 0),
        "gap_ms_p50": round(statistics.median(gaps) * 1000, 2) if gaps else None,
        "gap_ms_max": round(max(gaps) * 1000, 2) if gaps else None,
    }


def bench_drain(options: BenchOptions) -> dict[str, Any]:
    """The drain rate through the gate against the configured rate, with no 429."""
    runs = [
        _drain_once(options.workdir / f"drain{int(rate)}", rate, burst, 2 * options.duration)
        for rate, burst in DRAIN_RATES
    ]
    worst = max(abs(run["ratio"] - 1.0) for run in runs)
    meets = worst <= DRAIN_TOLERANCE and not any(run["too_many_requests"] for run in runs)
    return result(
        "drain",
        target=f"within {DRAIN_TOLERANCE:.0%} of the configured rate, no 429",
        ratio=min(run["ratio"] for run in runs),
        meets_target=meets,
        headline=[
            (
                f"{run['configured']:g}/s burst {run['burst']} ({run['jobs']} jobs)",
                f"{run['measured']:.2f}/s = {run['ratio']:.3f} of it, "
                f"429s {run['too_many_requests']}, gap p50 {run['gap_ms_p50']} ms",
            )
            for run in runs
        ],
        details={"runs": runs},
    )


# ---- scale ----------------------------------------------------------------------------------


def scale_run(root: Path, waiting: int, dead: int, *, pages: int = 20) -> dict[str, Any]:
    """Seed ``waiting`` + ``dead`` jobs, start a daemon on them: time to READY, RSS, the
    outbox counts and ``dlq.list`` page times (unfiltered, and filtered by reason)."""
    # At info, the log says how long the store's integrity walk took (``daemon.started``).
    d = DaemonProcess(root, outbox_config(DEAD_UPSTREAM, log_level="info"), {})
    with d:
        seeded = seed_jobs(d.state_dir, waiting=waiting, dead=dead)
        began = time.monotonic()
        d.start()
        startup = time.monotonic() - began
        started = d.events("daemon.started")
        checked = started[-1].get("store_checked_s") if started else None
        check_s = float(checked) if isinstance(checked, int | float) else 0.0
        with Client(d.socket, timeout=60) as client:
            status = client.status()
            timings: dict[str, list[float]] = {"page": [], "filtered": []}
            for name, args in (("page", {}), ("filtered", {"reason": "rejected"})):
                after = None
                for _ in range(pages):
                    page_args = dict(args, limit=100) | ({"after": after} if after else {})
                    t0 = time.perf_counter()
                    page = client.request("dlq.list", page_args)
                    timings[name].append((time.perf_counter() - t0) * 1000)
                    after = page["next"]
    outbox = status["outbox"]
    return {
        "waiting": waiting,
        "dead": dead,
        "seed_s": seeded["seconds"],
        "store_mb": round(seeded["store_bytes"] / 1e6, 1),
        "startup_s": round(startup, 3),
        "store_check_s": round(check_s, 3),
        "startup_unchecked_s": round(max(0.0, startup - check_s), 3),
        "rss_mb": round(status["process"]["rss_bytes"] / 1e6, 1),
        "pending": outbox["pending"],
        "dlq": outbox["dead"],
        "page_ms_p50": round(statistics.median(timings["page"]), 3),
        "filtered_page_ms_p50": round(statistics.median(timings["filtered"]), 3),
        "page_ms_max": round(max(timings["page"] + timings["filtered"]), 3),
    }


def bench_outbox_scale(options: BenchOptions) -> dict[str, Any]:
    """Start-up time and RSS on 1,000 vs 1,000,000 waiting jobs; dlq.list pages."""
    small, big = (
        scale_run(options.workdir / f"scale{waiting}", waiting, dead)
        for waiting, dead in SCALE_SIZES
    )
    # Judged: the start-up without the store's integrity walk, the one part of a start that
    # reads every record, on purpose (docs/configuration.md, [daemon.storage]); its time is
    # reported beside, per million records.
    unchecked = big["startup_unchecked_s"] / max(small["startup_unchecked_s"], 1e-3)
    whole = big["startup_s"] / small["startup_s"]
    rss = big["rss_mb"] / small["rss_mb"]
    records = (big["waiting"] + big["dead"]) / 1e6
    return result(
        "outbox-scale",
        target=(
            f"start-up (without the integrity walk) and RSS with 1M jobs within "
            f"{SCALE_TARGET}x of 1k"
        ),
        ratio=max(unchecked, rss),
        meets_target=unchecked <= SCALE_TARGET and rss <= SCALE_TARGET,
        headline=[
            (
                f"{run['waiting']:,} waiting + {run['dead']:,} dead ({run['store_mb']} MB)",
                f"READY in {run['startup_s']} s ({run['store_check_s']} s of it the integrity "
                f"walk), RSS {run['rss_mb']} MB, dlq.list page p50 {run['page_ms_p50']} ms "
                f"(by reason {run['filtered_page_ms_p50']} ms)",
            )
            for run in (small, big)
        ]
        + [
            (
                "1M / 1k",
                f"start-up {unchecked:.2f}x without the walk ({whole:.2f}x in all), RSS {rss:.2f}x",
            ),
            (
                "integrity walk",
                f"{big['store_check_s'] / records:.2f} s per million records",
            ),
        ],
        details={
            "small": small,
            "big": big,
            "startup_ratio": unchecked,
            "startup_ratio_whole": whole,
            "rss_ratio": rss,
        },
    )
