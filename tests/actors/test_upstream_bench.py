"""The direct benchmark baselines (httpx, and the daemon's own exchange), run briefly against a
real local server."""

from __future__ import annotations

import pytest
import trio
from http_fixture import http_server, refused_port

from claykiln.daemon.bench.http import _percentile, direct_httpx, direct_wire


@pytest.mark.parametrize("baseline", [direct_httpx, direct_wire])
async def test_bench_counts_and_bounds_requests(baseline: object) -> None:
    """The baseline stops at max_requests and reports rates, percentiles and statuses."""
    with trio.fail_after(10):
        async with http_server() as server:
            result = await baseline(  # type: ignore[operator]
                server.base_url + "/json", concurrency=4, seconds=5.0, max_requests=40
            )
    assert (result["requests"], result["errors"], result["statuses"]) == (40, 0, {200: 40})
    assert result["rps"] > 0
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]


@pytest.mark.parametrize("baseline", [direct_httpx, direct_wire])
async def test_bench_counts_failures(baseline: object) -> None:
    """Transport failures are counted, not raised."""
    with trio.fail_after(10):
        result = await baseline(  # type: ignore[operator]
            f"http://127.0.0.1:{refused_port()}/", concurrency=2, seconds=5.0, max_requests=10
        )
    assert (result["requests"], result["errors"]) == (0, 10)


def test_percentile_nearest_rank() -> None:
    """Nearest-rank percentiles of a sorted list."""
    values = [float(n) for n in range(1, 101)]
    assert [_percentile(values, p) for p in (0.5, 0.9, 0.99, 1.0)] == [50.0, 90.0, 99.0, 100.0]
    assert _percentile([], 0.5) == 0.0
