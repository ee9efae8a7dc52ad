"""``kiln bench``: measure the performance budget (docs/performance.md) on this machine.

    kiln bench [--scenario writes|hello|call|breaker-open|outage|outage-peers|replay|
                           call-idempotent|submit|drain|outbox-scale|subscribe|all|quick]...
               [--duration S] [--concurrency N] [--json] [--compare FILE.json [--threshold F]]
               [--cpu-latency US]

Scenarios (docs/performance.md has the budget, the method and measured figures):

- ``writes``: durable writes, group commit vs one fsynced commit per write (``writes``);
- ``hello``: ``hello`` round trips, daemon vs a bare trio msgpack server, two modes;
- ``call``: ``call`` through the daemon vs direct httpx, against nginx (or the simulator);
- ``breaker-open``: fail-fast rejections with the breaker forced open;
- ``outage``: upstream requests during an outage, daemon vs a naive retry loop;
- ``outage-peers``: per-process pybreaker + tenacity vs one daemon, same outage, two lengths,
  and a ``kill -9`` restart under the callers (daemon/bench/peers.py; ~6 min at full scale);
- ``replay``: replays of a completed idempotency key, closed loop and paced (daemon/bench/keyed.py);
- ``call-idempotent``: ``call`` with durable idempotency records vs without, and direct httpx.
- ``submit``: durable ``submit`` acknowledgements, fsync group commit vs ``sync = false``;
- ``drain``: queued jobs drained through the gate against the configured rate, with no 429;
- ``subscribe``: ``call`` beside a reading and a stalled subscriber vs alone (subscribers.py);
- ``outbox-scale``: start-up and RSS on 1,000 vs 1,000,000 waiting jobs, ``dlq.list`` pages
  (daemon/bench/outbox.py; seeding 1.1M jobs takes about a minute).
- ``abuse``: honest ``hello`` callers beside four hostile local clients (status flood, never
  reading, drip-fed frames, worst-case frames) vs alone (daemon/bench/abuse.py).

Each measured run lasts ``--duration`` seconds (a scenario makes 1 to 4 of them) and is bounded
in count too. Figures are ratios of two measurements made in the same run; the absolute numbers
move with the machine's load (the load average is recorded with every result). Benchmarks are
never assertions about speed in the test suite.

``--scenario`` may be given more than once; ``quick`` names every scenario but the slow ones
(``SLOW_SCENARIOS``: minutes even at a tiny ``--duration``), which is what CI runs.

Output: a rich table on a terminal; JSON with ``--json`` or when stdout is not a terminal.
``--cpu-latency US`` holds a CPU latency request for the whole run (``host.py``: 0 keeps idle
CPUs polling instead of halting, as a latency-tuned host does); every report records how the
CPUs idled (``machine.cpu_idle``). ``--compare FILE.json`` then prints the change against a
previous ``--json`` run (on stderr when the report goes to stdout as JSON; ``compare.py`` says
what is judged).
Exit status 0 when every scenario ran (whether or not it met its target), 1 when one failed,
3 when ``--compare`` found a regression past ``--threshold``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import click

from claykiln.daemon.bench.abuse import bench_abuse
from claykiln.daemon.bench.compare import (
    DEFAULT_THRESHOLD,
    compare_reports,
    load_report,
    render,
)
from claykiln.daemon.bench.host import (
    MAX_CPU_LATENCY_US,
    CpuLatencyUnavailable,
    cpu_idle,
    halting_note,
    hold_cpu_latency,
)
from claykiln.daemon.bench.keyed import bench_call_idempotent, bench_replay
from claykiln.daemon.bench.measure import BenchOptions
from claykiln.daemon.bench.outage import bench_outage
from claykiln.daemon.bench.outbox import bench_drain, bench_outbox_scale, bench_submit
from claykiln.daemon.bench.peers import bench_outage_peers
from claykiln.daemon.bench.scenarios import (
    bench_breaker_open,
    bench_call,
    bench_hello,
    bench_writes,
)
from claykiln.daemon.bench.subscribers import bench_subscribe

__all__ = [
    "EXIT_REGRESSION",
    "QUICK_SCENARIOS",
    "SCENARIOS",
    "SLOW_SCENARIOS",
    "bench_command",
    "run_bench",
    "scenario_names",
]

Scenario = Callable[[BenchOptions], dict[str, Any]]

SCENARIOS: Final[dict[str, Scenario]] = {
    "writes": bench_writes,
    "hello": bench_hello,
    "call": bench_call,
    "breaker-open": bench_breaker_open,
    "outage": bench_outage,
    "outage-peers": bench_outage_peers,
    "replay": bench_replay,
    "call-idempotent": bench_call_idempotent,
    "submit": bench_submit,
    "drain": bench_drain,
    "outbox-scale": bench_outbox_scale,
    "subscribe": bench_subscribe,
    "abuse": bench_abuse,
}
# Minutes even at a tiny --duration (a 30 s outage shape, seeding a million jobs): not "quick".
SLOW_SCENARIOS: Final = frozenset({"outage-peers", "outbox-scale"})
QUICK_SCENARIOS: Final = tuple(name for name in SCENARIOS if name not in SLOW_SCENARIOS)
EXIT_REGRESSION: Final = 3
MAX_DURATION: Final = 600.0
MAX_CONCURRENCY: Final = 1024


def scenario_names(chosen: Sequence[str]) -> list[str]:
    """The scenarios ``--scenario`` names, in the order of ``SCENARIOS``, each once (``all``:
    every one, ``quick``: ``QUICK_SCENARIOS``, none given: all)."""
    wanted: set[str] = set()
    for name in chosen or ("all",):
        if name == "all":
            wanted.update(SCENARIOS)
        elif name == "quick":
            wanted.update(QUICK_SCENARIOS)
        else:
            wanted.add(name)
    return [name for name in SCENARIOS if name in wanted]


def _machine(cpu_latency: int | None) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_idle": cpu_idle(cpu_latency),
    }


def run_bench(
    names: Sequence[str],
    options: BenchOptions,
    *,
    progress: Callable[[str], None] | None = None,
    cpu_latency: int | None = None,
) -> dict[str, Any]:
    """Run the named scenarios in order; return ``{date, machine, options, results}``
    (``cpu_latency``: the CPU latency request the caller holds meanwhile, for the report), and
    ``host_note`` when a target was missed on a guest whose idle vCPUs halt (``halting_note``).

    A scenario that raises becomes ``{"scenario", "error", "traceback"}`` and the next one runs.
    Each result gets ``load_average`` (1-minute load before and after it) and ``wall_s``.
    """
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        msg = f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}"
        raise ValueError(msg)
    results: list[dict[str, Any]] = []
    for name in names:
        if progress is not None:
            progress(name)
        load_before = os.getloadavg()[0]
        began = time.monotonic()
        try:
            outcome = SCENARIOS[name](options)
        except Exception as exc:
            outcome = {
                "scenario": name,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        outcome["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        outcome["wall_s"] = round(time.monotonic() - began, 1)
        results.append(outcome)
    machine = _machine(cpu_latency)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "options": {"duration": options.duration, "concurrency": options.concurrency},
        "results": results,
    }
    note = halting_note(machine["cpu_idle"])
    if note is not None and any(item.get("meets_target") is False for item in results):
        report["host_note"] = note
    return report


def _render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    machine = report["machine"]
    console.print(
        f"kiln bench  {report['date']}  {machine['cpus']} CPUs  "
        f"duration {report['options']['duration']:g}s  "
        f"concurrency {report['options']['concurrency']}"
    )
    table = Table("scenario", "figure", "value", "target", "ratio", "met")
    for item in report["results"]:
        name = item["scenario"]
        if "error" in item:
            table.add_row(name, "[red]error[/]", item["error"], "", "", "", end_section=True)
            continue
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[item["meets_target"]]
        ratio = "-" if item["ratio"] is None else f"{item['ratio']:.2f}"
        rows = [(str(label), str(value)) for label, value in item["headline"]]
        rows += [("note", str(note)) for note in item["notes"]]
        rows.append(("load average", "{} -> {}".format(*item["load_average"])))
        for index, (label, value) in enumerate(rows):
            first = index == 0
            table.add_row(
                name if first else "",
                label,
                value,
                item["target"] if first else "",
                ratio if first else "",
                met if first else "",
                end_section=index == len(rows) - 1,
            )
    console.print(table)
    idle = machine.get("cpu_idle") or {}
    held = idle.get("cpu_latency_held_us")
    console.print(
        f"idle CPUs: cpuidle {idle.get('driver')}, guest_halt_poll_ns "
        f"{idle.get('guest_halt_poll_ns')}, "
        + ("no CPU latency request held" if held is None else f"CPU latency held at {held} us")
    )
    if "host_note" in report:
        console.print(f"note: {report['host_note']}")


def bench_command() -> click.Command:
    """The ``kiln bench`` click command (the CLI adds it with ``main.add_command``)."""

    @click.command("bench")
    @click.option(
        "--scenario",
        "scenarios",
        type=click.Choice([*SCENARIOS, "all", "quick"]),
        multiple=True,
        help="What to measure (repeatable); all (the default) runs every scenario in turn, "
        f"quick all but {', '.join(sorted(SLOW_SCENARIOS))}.",
    )
    @click.option(
        "--duration",
        type=click.FloatRange(0.1, MAX_DURATION),
        default=5.0,
        show_default=True,
        help="Seconds per measured run (a scenario makes 1 to 4 runs).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
    @click.option(
        "--concurrency",
        type=click.IntRange(1, MAX_CONCURRENCY),
        default=64,
        show_default=True,
        help="Concurrent callers (connections, tasks or pipelined requests).",
    )
    @click.option(
        "--compare",
        "previous",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A previous --json report: print the change and exit 3 on a regression.",
    )
    @click.option(
        "--threshold",
        type=click.FloatRange(0.0, 10.0),
        default=DEFAULT_THRESHOLD,
        show_default=True,
        help="With --compare: how much worse (a fraction) a judged figure may get.",
    )
    @click.option(
        "--cpu-latency",
        type=click.IntRange(0, MAX_CPU_LATENCY_US),
        default=None,
        metavar="US",
        help="Hold a CPU latency request (/dev/cpu_dma_latency, needs root) for the run: 0 "
        "keeps idle CPUs polling instead of halting, as a latency-tuned host does "
        "(docs/operations.md, Latency-critical hosts).",
    )
    def bench(
        scenarios: tuple[str, ...],
        duration: float,
        as_json: bool,
        concurrency: int,
        previous: Path | None,
        threshold: float,
        cpu_latency: int | None,
    ) -> None:
        """Measure the daemon against its performance budget (docs/performance.md)."""
        names = scenario_names(scenarios)
        try:
            baseline = load_report(previous) if previous is not None else None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--compare") from None
        held: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if cpu_latency is not None:
            held = hold_cpu_latency(cpu_latency)
        workdir = Path(tempfile.mkdtemp(prefix="kiln-bench-", dir="/tmp"))  # short socket paths
        try:
            with held:
                options = BenchOptions(duration=duration, concurrency=concurrency, workdir=workdir)
                report = run_bench(
                    names,
                    options,
                    progress=lambda name: click.echo(f"kiln bench: running {name}...", err=True),
                    cpu_latency=cpu_latency,
                )
        except CpuLatencyUnavailable as exc:
            raise click.BadParameter(str(exc), param_hint="--cpu-latency") from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        to_json = as_json or not sys.stdout.isatty()
        if to_json:
            click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
        else:
            _render(report)
        regressed = False
        if baseline is not None:
            comparison = compare_reports(baseline, report, threshold)
            for line in render(comparison, previous=str(previous)):
                click.echo(line, err=to_json)
            regressed = bool(comparison.regressions)
        if any("error" in item for item in report["results"]):
            sys.exit(1)
        if regressed:
            sys.exit(EXIT_REGRESSION)

    return bench
