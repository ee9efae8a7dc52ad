"""How this host's CPUs idle, and ``kiln bench --cpu-latency``: hold a CPU latency request.

On a virtual machine, an idle vCPU halts: the hypervisor takes the core back, and waking it
(a reply arriving, a futex wake from the storage writer's thread) costs an exit to the host
and an interrupt injected back, before cold caches. KVM guests often run the ``haltpoll``
cpuidle driver with its polling switched off (``guest_halt_poll_ns = 0``), so every wake-up
pays that. Measured on the reference machine (docs/performance.md, "The host's idle CPUs"),
it is most of the paced replay tail and about a fifth of a durable submit's daemon CPU.

A process that holds ``/dev/cpu_dma_latency`` open with a value written to it asks the kernel
(PM QoS) to use no idle state whose exit latency exceeds that many microseconds while it stays
open; 0 leaves only polling, so idle vCPUs spin instead of halting. This is what ``tuned``'s
latency profiles do (``force_latency``). It costs a whole core per idle CPU, which is why the
daemon never does it itself: it is the host's choice (docs/operations.md, "Latency-critical
hosts"). ``kiln bench --cpu-latency 0`` holds it for the whole run, so both sides of every
comparison see the same host, and the report says so (``cpu_idle`` in its ``machine``).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

__all__ = [
    "CPU_DMA_LATENCY",
    "MAX_CPU_LATENCY_US",
    "CpuLatencyUnavailable",
    "cpu_idle",
    "halting_note",
    "hold_cpu_latency",
]

CPU_DMA_LATENCY: Final = Path("/dev/cpu_dma_latency")
CPUIDLE: Final = Path("/sys/devices/system/cpu/cpuidle")
HALTPOLL: Final = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
MAX_CPU_LATENCY_US: Final = 2_000_000_000  # the device takes a signed 32-bit value


class CpuLatencyUnavailable(OSError):
    """The CPU latency device cannot be opened for writing (the message says why)."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_idle(held_us: int | None = None) -> dict[str, Any]:
    """What the report says of the CPUs' idle states: the cpuidle driver and governor, the
    haltpoll driver's polling limit (``None`` where there is none), and the latency request
    ``kiln bench`` held during the run (``None``: none)."""
    halt_poll = _read(HALTPOLL)
    return {
        "driver": _read(CPUIDLE / "current_driver"),
        "governor": _read(CPUIDLE / "current_governor_ro") or _read(CPUIDLE / "current_governor"),
        "guest_halt_poll_ns": int(halt_poll) if halt_poll and halt_poll.isdigit() else None,
        "cpu_latency_held_us": held_us,
    }


def halting_note(idle: dict[str, Any]) -> str | None:
    """What to tell the reader of a report whose targets were missed on a guest whose idle
    vCPUs halt at once (``haltpoll`` with ``guest_halt_poll_ns = 0``, no latency request held):
    those wake-ups cost the daemon's figures, and ``--cpu-latency 0`` measures the host tuned.
    None for any other host (its idle states are not known to cost that much)."""
    halts = idle.get("driver") == "haltpoll" and idle.get("guest_halt_poll_ns") == 0
    if not halts or idle.get("cpu_latency_held_us") is not None:
        return None
    return (
        "this guest's idle vCPUs halt at once (haltpoll, guest_halt_poll_ns 0): every wake-up "
        "between the daemon's threads and its callers exits to the hypervisor, about a fifth of "
        "a durable submit and most of the paced tail; `sudo kiln bench --cpu-latency 0` measures "
        'the host with its idle CPUs polling (docs/performance.md, "The host\'s idle CPUs"; '
        'docs/operations.md, "Latency-critical hosts")'
    )


@contextlib.contextmanager
def hold_cpu_latency(microseconds: int, device: Path | None = None) -> Iterator[None]:
    """Ask for idle states that wake within ``microseconds`` while the block runs (0: the
    CPUs poll instead of halting); the kernel drops the request when the file is closed,
    also when the process dies. ``device``: ``CPU_DMA_LATENCY`` unless given.

    Raises ``ValueError`` for a value out of range and ``CpuLatencyUnavailable`` naming the
    device and what it takes when it cannot be opened for writing."""
    if not 0 <= microseconds <= MAX_CPU_LATENCY_US:
        msg = f"a CPU latency is 0..{MAX_CPU_LATENCY_US} microseconds, got {microseconds}"
        raise ValueError(msg)
    device = CPU_DMA_LATENCY if device is None else device
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        msg = f"{device} does not exist: this kernel offers no CPU latency requests (PM QoS)"
        raise CpuLatencyUnavailable(msg) from None
    except OSError as exc:
        msg = (
            f"cannot open {device} to hold a CPU latency request ({exc.strerror or exc}): it "
            "takes root, or write access granted to the device (e.g. by a udev rule)"
        )
        raise CpuLatencyUnavailable(msg) from None
    try:
        os.write(fd, struct.pack("=i", microseconds))
        yield
    finally:
        os.close(fd)
