"""Both HTTP clients an upstream can use (``http_client``), through a real daemon and the Clay
simulator: the same calls, the same answers, the same upstream accounting."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import TrioClient, UpstreamError
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]


@pytest.mark.parametrize("http_client", ["h11", "httpx"])
async def test_calls_through_either_http_client(
    kiln: Factory, simulator: RunningSimulator, http_client: str
) -> None:
    """GET and POST answers, rows stored, a reset reported as upstream_error, and one pool."""
    config = clay_config(simulator.url).replace(
        "max_connections = 64", f'max_connections = 64\nhttp_client = "{http_client}"'
    )
    proc = kiln(config)
    await proc.start()
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            me = await client.call("me")
            pushes = [
                await client.call("push_row", path_params={"webhook_id": "w1"}, json={"n": n})
                for n in range(5)
            ]
            simulator.sim.set_faults(Faults(reset="before_store"))
            with pytest.raises(UpstreamError) as info:
                await client.call("me")
            simulator.sim.set_faults(Faults())
            again = await client.call("me")
            status = await client.status()
    assert me["status"] == 200 and me["body"]["user"]["email"] == "sim@example.com"
    assert [p["status"] for p in pushes] == [200] * 5
    assert [row.body for row in simulator.sim.rows("w1")] == [{"n": n} for n in range(5)]
    assert info.value.details is not None and info.value.details["kind"] in ("reset", "protocol")
    assert again["status"] == 200
    pool = status["upstreams"]["clay"]
    assert pool["requests"] == 8 and pool["closed_after_error"] >= 1 and pool["in_use"] == 0
    assert await proc.stop() == 0
