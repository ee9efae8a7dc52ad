"""``kiln bench --cpu-latency`` and the report's ``machine.cpu_idle`` (daemon/bench/host.py).

The request is written to a file standing in for ``/dev/cpu_dma_latency`` (what a process
writes there is a native signed 32-bit value), and, where this machine lets us, to the real
device, whose read-back is the kernel's current target."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import claykiln.daemon.bench.command as bench_mod
import claykiln.daemon.bench.host as host
from claykiln.daemon.bench.command import bench_command, run_bench
from claykiln.daemon.bench.host import CpuLatencyUnavailable, cpu_idle, hold_cpu_latency
from claykiln.daemon.bench.measure import BenchOptions


@pytest.mark.parametrize("value", [0, 1, 250, host.MAX_CPU_LATENCY_US])
def test_the_request_is_written_as_a_native_s32(tmp_path: Path, value: int) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with hold_cpu_latency(value, device):
        assert device.read_bytes() == struct.pack("=i", value)


@pytest.mark.parametrize("value", [-1, host.MAX_CPU_LATENCY_US + 1])
def test_a_value_out_of_range_is_refused_before_anything_is_opened(
    tmp_path: Path, value: int
) -> None:
    device = tmp_path / "cpu_dma_latency"
    with (
        pytest.raises(ValueError, match=r"0\.\.2000000000 microseconds"),
        hold_cpu_latency(value, device),
    ):
        pass
    assert not device.exists()


def test_a_missing_or_unwritable_device_says_what_it_takes(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    with pytest.raises(CpuLatencyUnavailable, match="does not exist: this kernel offers no"):
        hold_cpu_latency(0, absent).__enter__()
    # A directory cannot be opened for writing: the message says what the device takes.
    with pytest.raises(CpuLatencyUnavailable, match=r"cannot open .*takes root, or write access"):
        hold_cpu_latency(0, tmp_path).__enter__()


REAL = host.CPU_DMA_LATENCY


@pytest.mark.skipif(
    not (REAL.exists() and os.access(REAL, os.R_OK | os.W_OK)),
    reason="/dev/cpu_dma_latency is not readable and writable here (it takes root)",
)
def test_the_kernel_holds_the_request_while_the_block_runs() -> None:
    """The real device reads back the current target: 0 inside the block, as before after."""

    def target() -> int:
        fd = os.open(REAL, os.O_RDONLY)
        try:
            return int(struct.unpack("=i", os.read(fd, 4))[0])
        finally:
            os.close(fd)

    before = target()
    with hold_cpu_latency(0):
        assert target() == 0
    assert target() == before


def test_the_report_says_how_the_cpus_idled(tmp_path: Path) -> None:
    options = BenchOptions(duration=0.1, concurrency=1, workdir=tmp_path)
    idle = run_bench([], options, cpu_latency=5)["machine"]["cpu_idle"]
    assert set(idle) == {"driver", "governor", "guest_halt_poll_ns", "cpu_latency_held_us"}
    assert idle["cpu_latency_held_us"] == 5
    assert run_bench([], options)["machine"]["cpu_idle"]["cpu_latency_held_us"] is None
    assert cpu_idle() == {**idle, "cpu_latency_held_us": None}


def test_bench_holds_the_request_for_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kiln bench --cpu-latency 0: the scenarios run while the request is held."""
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    monkeypatch.setattr(host, "CPU_DMA_LATENCY", device)
    seen: list[bytes] = []

    def fake(options: BenchOptions) -> dict[str, Any]:
        seen.append(device.read_bytes())
        return {"scenario": "writes"}

    monkeypatch.setitem(bench_mod.SCENARIOS, "writes", fake)
    outcome = CliRunner().invoke(
        bench_command(), ["--scenario", "writes", "--cpu-latency", "0", "--json"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert seen == [struct.pack("=i", 0)]
    assert json.loads(outcome.stdout)["machine"]["cpu_idle"]["cpu_latency_held_us"] == 0


def test_bench_without_the_device_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "CPU_DMA_LATENCY", tmp_path / "absent")
    ran: list[str] = []
    monkeypatch.setitem(bench_mod.SCENARIOS, "writes", lambda options: ran.append("writes"))
    outcome = CliRunner().invoke(bench_command(), ["--scenario", "writes", "--cpu-latency", "0"])
    assert outcome.exit_code == 2
    assert "--cpu-latency" in outcome.output and "does not exist" in outcome.output
    assert ran == []
    refused = CliRunner().invoke(bench_command(), ["--cpu-latency", "-1"])
    assert refused.exit_code == 2 and "-1 is not in the range" in refused.output


HALTING = {
    "driver": "haltpoll",
    "governor": "haltpoll",
    "guest_halt_poll_ns": 0,
    "cpu_latency_held_us": None,
}


@pytest.mark.parametrize(
    ("idle", "noted"),
    [
        (HALTING, True),
        ({**HALTING, "cpu_latency_held_us": 0}, False),  # measured with the CPUs polling
        ({**HALTING, "guest_halt_poll_ns": 200_000}, False),  # the guest polls before halting
        ({**HALTING, "driver": "intel_idle", "guest_halt_poll_ns": None}, False),
        ({"driver": None, "governor": None, "guest_halt_poll_ns": None}, False),
    ],
)
def test_a_guest_that_halts_at_once_is_named(idle: dict[str, Any], noted: bool) -> None:
    note = host.halting_note(idle)
    assert (note is not None) == noted
    if noted:
        assert note is not None and "--cpu-latency 0" in note and "haltpoll" in note


def _one_result(met: bool) -> dict[str, Any]:
    return {
        "scenario": "writes",
        "target": ">= 1",
        "ratio": 1.0,
        "meets_target": met,
        "headline": [["writes", "1/s"]],
        "notes": [],
        "load_average": [0.1, 0.1],
    }


@pytest.mark.parametrize("met", [True, False])
def test_a_missed_target_on_a_halting_guest_gets_the_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], met: bool
) -> None:
    """The report's reader learns why, only when a target was missed on such a host: in the
    JSON (``host_note``) and under the table."""
    monkeypatch.setattr(bench_mod, "cpu_idle", lambda held=None: dict(HALTING))
    monkeypatch.setitem(bench_mod.SCENARIOS, "writes", lambda options: _one_result(met))
    outcome = CliRunner().invoke(bench_command(), ["--scenario", "writes", "--json"])
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert ("host_note" in report) == (not met)
    bench_mod._render(report)
    text = " ".join(capsys.readouterr().out.split())
    assert "idle CPUs: cpuidle haltpoll, guest_halt_poll_ns 0" in text
    assert ("note: this guest's idle vCPUs halt at once" in text) == (not met)
