"""The baselines for ``kiln bench --scenario call``: direct HTTP with no daemon in between.

- ``direct_httpx``: the best direct httpx usage under trio, the target's baseline. One
  single-connection ``httpx.AsyncClient`` per worker task (1,914 req/s at 64 tasks against 206
  with one shared pool: docs/performance.md, "Measured building blocks"), one SSL context.
- ``direct_wire``: the daemon's own exchange (``Http11Connection``) per worker, a reference
  floor: what the daemon adds to a call is the gap between it and ``call``.

Both hammer one URL with GET, bounded in time (no new request after ``seconds``; in-flight ones
get DRAIN_GRACE more) and in count (``max_requests`` in all). A tool, not the product: in the
product only actors/upstream*.py import httpx; h11 is used here only through Http11Connection.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import httpx
import trio

from claykiln.actors.upstream_wire import Http11Connection, Origin

__all__ = ["direct_httpx", "direct_wire"]

DRAIN_GRACE: Final = 5.0  # seconds in-flight requests get after the run time is up
REQUEST_TIMEOUT: Final = 10.0


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = min(max(1, math.ceil(fraction * len(ordered))), len(ordered))
    return ordered[rank - 1]


Send = Callable[[], Awaitable[int]]  # one GET -> its status; raises to count an error


async def direct_httpx(
    url: str, *, concurrency: int = 64, seconds: float = 5.0, max_requests: int = 200_000
) -> dict[str, Any]:
    """GET ``url`` from ``concurrency`` workers for up to ``seconds`` or ``max_requests`` calls.

    Returns ``requests`` (completed with any status), ``errors`` (transport errors), ``seconds``
    (elapsed), ``rps``, ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms`` latency, ``statuses`` (count by
    status) and ``concurrency``. Never raises for a failing URL: failures are counted.
    """
    ssl_context = httpx.create_ssl_context(trust_env=False)

    @asynccontextmanager
    async def sender() -> AsyncIterator[Send]:
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=REQUEST_TIMEOUT,
            verify=ssl_context,
            trust_env=False,
        ) as client:

            async def send() -> int:
                return (await client.get(url)).status_code

            yield send

    return await _hammer(sender, concurrency, seconds, max_requests)


async def direct_wire(
    url: str, *, concurrency: int = 64, seconds: float = 5.0, max_requests: int = 200_000
) -> dict[str, Any]:
    """The same load as ``direct_httpx``, through the daemon's own HTTP/1.1 exchange
    (``Http11Connection``, one per worker) and no daemon: the floor a call through the daemon
    is compared with to see what the daemon itself adds. Same figures and bounds."""
    parsed = httpx.URL(url)
    origin = Origin.from_url(parsed)
    ssl_context = httpx.create_ssl_context(trust_env=False)
    headers = [(b"Host", origin.host_header), (b"Accept", b"*/*"), (b"User-Agent", b"claykiln")]

    @asynccontextmanager
    async def sender() -> AsyncIterator[Send]:
        conn = Http11Connection(origin, ssl_context)

        async def send() -> int:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    response = await conn.exchange(
                        b"GET",
                        parsed.raw_path,
                        headers,
                        None,
                        connect_timeout=None,
                        max_body=1 << 20,
                    )
            except BaseException:
                await conn.aclose()  # a failed or cut exchange leaves the connection unusable
                raise
            return response.status

        try:
            yield send
        finally:
            await conn.aclose()

    return await _hammer(sender, concurrency, seconds, max_requests)


async def _hammer(
    sender: Callable[[], AbstractAsyncContextManager[Send]],
    concurrency: int,
    seconds: float,
    max_requests: int,
) -> dict[str, Any]:
    """Run ``concurrency`` workers, each with its own ``sender()``, within both bounds."""
    if concurrency < 1 or seconds <= 0 or max_requests < 1:
        msg = "concurrency and max_requests must be >= 1 and seconds > 0"
        raise ValueError(msg)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    issued = 0
    start = trio.current_time()
    stop_at = start + seconds

    async def worker() -> None:
        nonlocal issued, errors
        async with sender() as send:
            while issued < max_requests and trio.current_time() < stop_at:
                issued += 1
                began = trio.current_time()
                try:
                    status = await send()
                except (httpx.HTTPError, trio.TooSlowError):
                    errors += 1
                    continue
                latencies.append(trio.current_time() - began)
                statuses[status] = statuses.get(status, 0) + 1

    with trio.move_on_at(stop_at + DRAIN_GRACE):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return _summary(latencies, statuses, errors, trio.current_time() - start, concurrency)


def _summary(
    latencies: list[float],
    statuses: dict[int, int],
    errors: int,
    elapsed: float,
    concurrency: int,
) -> dict[str, Any]:
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
