"""The baseline for ``kiln bench``: the best direct httpx usage under trio.

One single-connection ``httpx.AsyncClient`` per worker task (notes/measurements.md: 1,914 req/s
at 64 tasks against 206 with one shared pool), all sharing one SSL context, hammering one URL
with GET. Bounded in time (no new request after ``seconds``; in-flight ones get DRAIN_GRACE more)
and in count (``max_requests`` in all). It lives here because only actors/upstream*.py-side code
may import httpx.
"""

from __future__ import annotations

import math
from typing import Any, Final

import httpx
import trio

__all__ = ["direct_httpx"]

DRAIN_GRACE: Final = 5.0  # seconds in-flight requests get after the run time is up
REQUEST_TIMEOUT: Final = 10.0


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = min(max(1, math.ceil(fraction * len(ordered))), len(ordered))
    return ordered[rank - 1]


async def direct_httpx(
    url: str, *, concurrency: int = 64, seconds: float = 5.0, max_requests: int = 200_000
) -> dict[str, Any]:
    """GET ``url`` from ``concurrency`` workers for up to ``seconds`` or ``max_requests`` calls.

    Returns ``requests`` (completed with any status), ``errors`` (transport errors), ``seconds``
    (elapsed), ``rps``, ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms`` latency, ``statuses`` (count by
    status) and ``concurrency``. Never raises for a failing URL: failures are counted.
    """
    if concurrency < 1 or seconds <= 0 or max_requests < 1:
        msg = "concurrency and max_requests must be >= 1 and seconds > 0"
        raise ValueError(msg)
    ssl_context = httpx.create_ssl_context(trust_env=False)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    issued = 0
    start = trio.current_time()
    stop_at = start + seconds

    async def worker() -> None:
        nonlocal issued, errors
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=REQUEST_TIMEOUT,
            verify=ssl_context,
            trust_env=False,
        ) as client:
            while issued < max_requests and trio.current_time() < stop_at:
                issued += 1
                began = trio.current_time()
                try:
                    response = await client.get(url)
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(trio.current_time() - began)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    with trio.move_on_at(stop_at + DRAIN_GRACE):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    elapsed = trio.current_time() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 3),
        "p90_ms": round(_percentile(latencies, 0.90) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else 0.0,
        "statuses": statuses,
        "concurrency": concurrency,
    }
