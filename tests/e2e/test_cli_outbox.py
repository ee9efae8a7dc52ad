"""``kiln submit``, ``kiln jobs``, ``kiln dlq`` and ``kiln quota`` end to end: real CLI
subprocesses against a real daemon and the simulator (stdout is a pipe: JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from outbox_harness import Factory, outbox_config, wait_for
from test_cli_idempotency import kiln_cli, ok

from claykiln.actors.jobs_policy import REASONS
from claykiln.daemon import TrioClient
from claykiln.daemon.cli.dlq import REASONS as CLI_REASONS
from claykiln.daemon.simulator import RunningSimulator


def rows(webhook: str, *numbers: int) -> list[tuple[str, ...]]:
    return [
        ("submit", "push_row", "--param", f"webhook_id={webhook}", "--json", json.dumps({"n": n}))
        for n in numbers
    ]


async def test_submit_and_look_at_the_job(kiln: Factory, simulator: RunningSimulator) -> None:
    """kiln submit prints the job on disk (-H in curl's form); jobs show and jobs list find it
    done."""
    proc = kiln(outbox_config(simulator.url))
    await proc.start()
    (args,) = rows("w1", 1)
    job = ok(await kiln_cli(proc.socket, *args, "--idempotency-key", "order-1", "-H", "x-n: 1"))
    async with TrioClient(str(proc.socket)) as client:
        await wait_for(client, lambda s: s["done"] == 1)
    shown = ok(await kiln_cli(proc.socket, "jobs", "show", job["job_id"]))
    listed = ok(await kiln_cli(proc.socket, "jobs", "list", "--state", "done"))
    missing = await kiln_cli(proc.socket, "jobs", "show", "0" * 32)
    later = ok(await kiln_cli(proc.socket, *args, "--not-before", "+1h"))
    assert (job["state"], job["idempotency_key"]) == ("pending", "order-1")
    assert (shown["state"], shown["attempts"]) == ("done", 1)
    assert shown["request"]["headers"] == {"x-n": "1"}  # -H "Name: value", as kiln call takes it
    assert [item["job_id"] for item in listed["items"]] == [job["job_id"]]
    assert missing.returncode == 1 and b"no job" in missing.stderr
    assert later["existing"] is False and later["due_at"] > job["due_at"] + 3000
    assert await proc.stop() == 0


async def test_recover_dead_jobs_step_by_step(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """The recovery of docs/operations.md: list the dead (401: a wrong webhook token), show
    one, fix the token at Clay, retry it; export the rest, purge them (a dry run first), and
    submit the export again: every row reaches Clay once, nothing is left dead."""
    sim = simulator.sim
    sim.configure_webhook("locked", token="not-the-daemons-token")
    proc = kiln(outbox_config(simulator.url))
    await proc.start()
    for args in rows("locked", 1, 2, 3):
        ok(await kiln_cli(proc.socket, *args))
    async with TrioClient(str(proc.socket)) as client:
        await wait_for(client, lambda s: s["dead"] == 3)
    listed = ok(await kiln_cli(proc.socket, "dlq", "list", "--reason", "rejected"))
    first = listed["items"][0]["job_id"]
    shown = ok(await kiln_cli(proc.socket, "dlq", "show", first))
    sim.configure_webhook("locked")  # the operator fixed the token at Clay
    retried = ok(await kiln_cli(proc.socket, "dlq", "retry", first))
    export = tmp_path / "dead.jsonl"
    ok_export = await kiln_cli(proc.socket, "dlq", "export", "--output", str(export))
    dry = await kiln_cli(proc.socket, "dlq", "purge", "--reason", "rejected")
    async with TrioClient(str(proc.socket)) as client:
        await wait_for(client, lambda s: s["done"] == 1)
    purged = ok(await kiln_cli(proc.socket, "dlq", "purge", "--all", "--yes"))
    resubmitted = await kiln_cli(proc.socket, "submit", "--from", str(export))
    async with TrioClient(str(proc.socket)) as client:
        final = await wait_for(client, lambda s: s["done"] == 3)
    assert len(listed["items"]) == 3 and shown["history"][0]["outcome"] == "status 401"
    assert retried["retried"] == 1
    assert ok_export.returncode == 0 and len(export.read_text().splitlines()) == 2
    assert dry.returncode == 0 and json.loads(dry.stdout)["dry_run"] is True
    assert b"add --yes" in dry.stderr
    assert purged["purged"] == 2
    answers = [json.loads(line) for line in resubmitted.stdout.splitlines()]
    assert resubmitted.returncode == 0 and [a["existing"] for a in answers] == [False, False]
    assert final["dead"] == 0 and sim.row_count("locked") == 3
    assert await proc.stop() == 0


async def test_quota_list_shows_every_counted_source(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """kiln quota list: rows per source against its cap, none held."""
    proc = kiln(outbox_config(simulator.url, ops={"lifetime_rows": 100}))
    await proc.start()
    for args in rows("a", 1, 2) + rows("b", 3):
        ok(await kiln_cli(proc.socket, *args))
    async with TrioClient(str(proc.socket)) as client:
        await wait_for(client, lambda s: s["done"] == 3)
    listed: Any = ok(await kiln_cli(proc.socket, "quota", "list"))
    by_source = {item["source"]: item for item in listed}
    assert by_source["clay:/v3/sources/webhook/a"]["rows"] == 2
    assert by_source["clay:/v3/sources/webhook/b"]["cap"] == 100
    assert not any(item["held"] for item in listed)
    assert await proc.stop() == 0


def test_the_cli_names_every_reason() -> None:
    """kiln dlq --reason offers exactly the reasons a job can die for."""
    assert CLI_REASONS == REASONS


async def test_submit_refusals_exit_1_with_the_reason(
    kiln: Factory, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A refused submit exits 1 naming the code; --from prints an error line for a bad one."""
    proc = kiln(outbox_config(simulator.url))
    await proc.start()
    big = json.dumps({"blob": "x" * 100_001})
    refused = await kiln_cli(
        proc.socket, "submit", "push_row", "--param", "webhook_id=w", "--json", big
    )
    lines = tmp_path / "mixed.jsonl"
    good = {"operation": "push_row", "path_params": {"webhook_id": "w"}, "json": {"n": 1}}
    lines.write_text(json.dumps(good) + "\n" + json.dumps({"operation": "nope"}) + "\n")
    mixed = await kiln_cli(proc.socket, "submit", "--from", str(lines))
    answers = [json.loads(line) for line in mixed.stdout.splitlines()]
    assert refused.returncode == 1 and b"bad_request" in refused.stderr
    assert mixed.returncode == 1 and answers[0]["state"] == "pending"
    assert answers[1]["error"]["code"] == "unknown_operation"
    assert await proc.stop() == 0
