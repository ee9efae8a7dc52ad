"""The outbox's crash campaign: client processes submit rows while the simulator injects 5xx,
429 and connection resets (before and after the row is stored) and the daemon is killed with
SIGKILL at random moments and restarted each time. At the end every acknowledged submit was
received by the simulator or sits in the dead-letter queue with a reason (one in doubt may also
have been received: that is what in doubt means); no row of the operation that is not safe to
repeat (push_row) was received twice; none is neither. Counted and asserted.

A bounded slice runs with the default suite; the full campaign (2,000 submits from 4 client
processes, 6 kills) is marked ``slow``.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from outbox_harness import Factory, outbox_config, outbox_status

from claykiln.daemon import TrioClient
from claykiln.daemon.simulator import Faults, RunningSimulator

CLIENT = Path(__file__).with_name("outbox_crash_client.py")
PLAN_REQUESTS = 12
PLAN_SECONDS = 1.0
FAULT_PLANS = (
    Faults(),
    Faults(burst=8, error_status=503, path_prefix="/v3/"),  # the next 8 requests: 503
    Faults(error_rate=0.5, error_status=500, path_prefix="/v3/"),
    Faults(reset="after_store", reset_rate=0.5, path_prefix="/v3/"),
    Faults(reset="before_store", reset_rate=0.5, path_prefix="/v3/"),
    Faults(latency=0.05, path_prefix="/v3/"),
)


@attrs.frozen
class Campaign:
    submits: int
    clients: int
    kills: int
    seed: int


@attrs.define
class Tally:
    acknowledged: int = 0
    failed_submits: int = 0
    done: int = 0
    dead: Counter[str] = attrs.Factory(Counter)
    in_doubt_received: int = 0
    keyed_repeats: int = 0
    kills: int = 0
    responses: dict[str, int] = attrs.Factory(dict)


async def _chaos(sim: Any, rng: random.Random, stop: trio.Event) -> None:
    """Every fault plan in turn (shuffled each round) until ``stop``, each for the next
    ``PLAN_REQUESTS`` requests Clay gets (at most ``PLAN_SECONDS``); 429s come from Clay's own
    limit, below the daemon's gate."""
    while not stop.is_set():
        plans = list(FAULT_PLANS)
        rng.shuffle(plans)
        for plan in plans:
            sim.set_faults(attrs.evolve(plan, seed=rng.randrange(1 << 30)))
            until = sim.stats.clay_requests + PLAN_REQUESTS
            with trio.move_on_after(PLAN_SECONDS):
                await sim.wait_until(lambda s, until=until: s.stats.clay_requests >= until)
            if stop.is_set():
                break
    sim.clear_faults()


async def run_campaign(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path, campaign: Campaign
) -> Tally:
    rng = random.Random(campaign.seed)
    sim = simulator.sim
    # Clay paces at 100/s burst 20 and the daemon's gate allows 400/s burst 100: 429s happen.
    sim.update_settings(sim.settings.evolve_from_json({"webhook_rate": 100, "webhook_burst": 20}))
    ops = {"attempts": 8, "base": "20ms", "cap": "200ms", "concurrency": 16}
    proc = kiln(outbox_config(simulator.url, ops=ops, rate=400, burst=100, reset="200ms"))
    await proc.start()
    tally = Tally()
    outputs = [tmp_path / f"client{n}.jsonl" for n in range(campaign.clients)]
    per_client = campaign.submits // campaign.clients
    stop_chaos = trio.Event()
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_chaos, sim, rng, stop_chaos)
            async with trio.open_nursery() as clients:
                for n, out in enumerate(outputs):
                    command = [sys.executable, str(CLIENT), "--socket", str(proc.socket)]
                    command += ["--client", str(n), "--count", str(per_client), "--out", str(out)]
                    clients.start_soon(trio.run_process, command)
                for _ in range(campaign.kills):
                    await trio.sleep(rng.uniform(0.2, 0.9))
                    await proc.kill()
                    tally.kills += 1
                    await trio.sleep(rng.uniform(0.0, 0.3))
                    await proc.start()
            stop_chaos.set()
        async with TrioClient(str(proc.socket)) as client:
            while True:
                section = await outbox_status(client)
                if section["pending"] + section["retry_wait"] + section["in_flight"] == 0:
                    break
                await trio.sleep(0.05)
            await _tally(client, sim, outputs, tally)
    tally.responses = {
        f"{kind} {status}": count for (kind, status), count in sim.stats.responses.items()
    }
    tally.responses["resets"] = sum(sim.stats.resets.values())
    tally.responses["5xx"] = sum(
        count for (kind, status), count in sim.stats.responses.items() if status >= 500
    )
    assert await proc.stop() == 0
    return tally


async def _tally(client: TrioClient, sim: Any, outputs: list[Path], tally: Tally) -> None:
    received = {
        webhook: Counter(row.body["id"] for row in sim.rows(webhook))
        for webhook in ("plain", "keyed")
    }
    for path in outputs:
        for text in path.read_text().splitlines():
            line = json.loads(text)
            if "job_id" not in line:
                tally.failed_submits += 1
                continue
            tally.acknowledged += 1
            plain = line["operation"] == "push_row"
            count = received["plain" if plain else "keyed"][line["row"]]
            job = await client.job(line["job_id"])
            assert job is not None, f"acknowledged submit {line} was lost"
            assert job["state"] in ("done", "dead"), job
            if job["state"] == "done":
                tally.done += 1
                assert count >= 1, f"done but never received: {job}"
                assert not plain or count == 1, f"received {count} times: {job}"
            else:
                assert job["reason"], job
                tally.dead[job["reason"]] += 1
                if job["reason"] == "in_doubt" and count:
                    tally.in_doubt_received += 1
                elif plain:
                    assert count == 0, f"dead ({job['reason']}) yet received: {job}"
            if not plain and count > 1:
                tally.keyed_repeats += 1
    assert max(received["plain"].values(), default=0) <= 1  # never twice, acknowledged or not


async def test_crash_campaign_slice(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """200 submits from 2 processes, faults, 2 kill -9s: nothing acknowledged is lost or sent
    twice where that is not safe."""
    tally = await run_campaign(kiln, simulator, tmp_path, Campaign(200, 2, 2, seed=8))
    print(f"\ncrash campaign slice: {attrs.asdict(tally)}")
    assert tally.acknowledged == 200 and tally.failed_submits == 0
    assert tally.done + sum(tally.dead.values()) == tally.acknowledged
    assert tally.kills == 2
    assert tally.responses["webhook 429"] and tally.responses["5xx"] and tally.responses["resets"]


@pytest.mark.slow
async def test_crash_campaign_full(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """2,000 submits from 4 processes, faults, 6 kill -9s: the same promises, counted."""
    tally = await run_campaign(kiln, simulator, tmp_path, Campaign(2000, 4, 6, seed=21))
    print(f"\ncrash campaign: {attrs.asdict(tally)}")
    assert tally.acknowledged == 2000 and tally.failed_submits == 0
    assert tally.done + sum(tally.dead.values()) == tally.acknowledged
    assert tally.kills >= 5
    assert tally.responses["webhook 429"] and tally.responses["5xx"] and tally.responses["resets"]
