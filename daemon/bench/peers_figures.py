"""The figures of ``kiln bench --scenario outage-peers``, from the calls every process recorded.

Pure functions over the peer processes' results (``peers_load.py``: ``calls`` is
``[[start, end, code], ...]`` in monotonic seconds shared by every process) and the moments the
bench changed the upstream, so every figure is counted from that run's calls:

- ``outage_figures``: time to open (the first ``breaker_open`` a caller got after the outage
  began, for the first and the last process to get one), caller latency over the calls started
  during the outage, time from the upstream's return to the first success (first and last
  process), and the calls by outcome;
- ``restart_figures``: what callers saw across a ``kill -9`` and restart of the daemon.

A figure that did not happen in the run (no refusal, no success after the return) is None.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from claykiln.daemon.bench.load import percentile

__all__ = ["calls_of", "latency_figures", "outage_figures", "restart_figures"]

Call = tuple[float, float, str]
REFUSAL: Final = "breaker_open"
OK: Final = "ok"


def calls_of(process: Mapping[str, Any]) -> list[Call]:
    """One process's calls as ``(start, end, code)`` tuples."""
    return [(float(a), float(b), str(code)) for a, b, code in process["calls"]]


def latency_figures(calls: Iterable[Call]) -> dict[str, Any]:
    """``calls`` count and latency p50/p99/max in ms (0.0 when there are none)."""
    latencies = sorted(end - start for start, end, _ in calls)
    return {
        "calls": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else 0.0,
    }


def _first_end(calls: Sequence[Call], code: str, since: float) -> float | None:
    """Seconds from ``since`` to the earliest end of a call answered ``code`` at or after it."""
    ends = [end for _, end, got in calls if got == code and end >= since]
    return round(min(ends) - since, 3) if ends else None


def _spread(values: list[float | None]) -> dict[str, Any]:
    """First and last of per-process figures; ``last`` is None unless every process has one."""
    seen = [v for v in values if v is not None]
    return {
        "first": min(seen) if seen else None,
        "last": max(seen) if seen and len(seen) == len(values) else None,
        "processes": len(seen),
    }


def _codes(calls: Iterable[Call]) -> dict[str, int]:
    return dict(sorted(Counter(code for _, _, code in calls).items()))


def outage_figures(
    processes: Sequence[Mapping[str, Any]], *, outage_start: float, outage_end: float
) -> dict[str, Any]:
    """The outage run's caller-side figures (module doc).

    ``open_after_s`` / ``first_success_after_s``: ``{first, last, processes}`` in seconds from
    the outage start / the upstream's return; ``during_outage``: latency and codes of the calls
    started while the upstream was dead; ``codes``: every call of the run by outcome."""
    per_process = [calls_of(p) for p in processes]
    every = [call for calls in per_process for call in calls]
    during = [call for call in every if outage_start <= call[0] < outage_end]
    return {
        "calls": len(every),
        "codes": _codes(every),
        "open_after_s": _spread([_first_end(c, REFUSAL, outage_start) for c in per_process]),
        "first_success_after_s": _spread([_first_end(c, OK, outage_end) for c in per_process]),
        "during_outage": {**latency_figures(during), "codes": _codes(during)},
        "before_outage": latency_figures(c for c in every if c[0] < outage_start),
    }


def restart_figures(
    processes: Sequence[Mapping[str, Any]], *, killed_at: float, ready_at: float
) -> dict[str, Any]:
    """What callers saw across a ``kill -9`` at ``killed_at`` and the restarted daemon's
    ``READY=1`` at ``ready_at``: ``errors`` (every call not answered ok, by code),
    ``first_success_after_kill_s`` (first and last process), and the latency of the calls that
    ended after the kill (the calls the restart held up)."""
    per_process = [calls_of(p) for p in processes]
    every = [call for calls in per_process for call in calls]
    errors = [call for call in every if call[2] != OK]
    return {
        "calls": len(every),
        "codes": _codes(every),
        "errors": len(errors),
        "error_codes": _codes(errors),
        "restart_s": round(ready_at - killed_at, 3),
        "first_success_after_kill_s": _spread([_first_end(c, OK, killed_at) for c in per_process]),
        "after_kill": latency_figures(c for c in every if c[1] >= killed_at),
    }
