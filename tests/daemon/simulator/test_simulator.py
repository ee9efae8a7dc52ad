"""The Clay simulator over real HTTP on 127.0.0.1, driven by httpx like a real client would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from claykiln.daemon.simulator import (
    DEFAULT_API_KEY,
    Faults,
    RunningSimulator,
    SimSettings,
    Simulator,
    open_simulator,
)

TIMEOUT = 10
CONNECTION_ERRORS = (httpx.ReadError, httpx.RemoteProtocolError)
KEY = {"clay-api-key": DEFAULT_API_KEY}


class ManualClock:
    """A clock the test moves by hand (the simulator's token buckets read it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def serving(
    sim: Simulator | None = None, **settings: Any
) -> AsyncIterator[tuple[RunningSimulator, httpx.AsyncClient]]:
    """A running simulator and an httpx client pointed at it."""
    async with (
        open_simulator(sim, **settings) as running,
        httpx.AsyncClient(base_url=running.url) as client,
    ):
        yield running, client


async def push(client: httpx.AsyncClient, webhook: str, payload: Any, **kw: Any) -> httpx.Response:
    return await client.post(f"/v3/sources/webhook/{webhook}", json=payload, **kw)


async def test_webhook_stores_one_row_per_post_with_recorded_headers() -> None:
    """A JSON POST answers 200, stores one row (an array is one row), no dedupe, keeps headers."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            first = await push(
                client, "w1", [{"a": 1}, {"a": 2}], headers={"Idempotency-Key": "k1"}
            )
            again = await push(
                client, "w1", [{"a": 1}, {"a": 2}], headers={"Idempotency-Key": "k1"}
            )
            assert (first.status_code, first.json()) == (200, {"status": "ok"})
            assert again.status_code == 200
            sim = running.sim
            assert sim.row_count("w1") == 2
            rows = sim.rows("w1")
            assert [row.body for row in rows] == [[{"a": 1}, {"a": 2}]] * 2
            assert rows[0].headers["idempotency-key"] == "k1"
            assert sim.stats.responses["webhook", 200] == 2
            assert sim.stats.received["webhook"] == 2


async def test_webhook_rejects_wrong_content_type_and_bad_json_with_400() -> None:
    """Non-JSON content types and unparsable bodies get 400 and store nothing."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            url = "/v3/sources/webhook/w1"
            plain = await client.post(
                url, content=b'{"a":1}', headers={"content-type": "text/plain"}
            )
            broken = await client.post(
                url, content=b"{oops", headers={"content-type": "application/json"}
            )
            assert [plain.status_code, broken.status_code] == [400, 400]
            assert "application/json" in plain.json()["message"]
            assert running.sim.row_count("w1") == 0
            assert running.sim.stats.responses["webhook", 400] == 2


async def test_webhook_token_mismatch_or_absence_is_401() -> None:
    """A webhook with a token refuses a missing or wrong x-clay-webhook-auth with 401."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            running.sim.configure_webhook("secure", token="s3cret")
            missing = await push(client, "secure", {"a": 1})
            wrong = await push(client, "secure", {"a": 1}, headers={"x-clay-webhook-auth": "nope"})
            right = await push(
                client, "secure", {"a": 1}, headers={"x-clay-webhook-auth": "s3cret"}
            )
            assert [missing.status_code, wrong.status_code, right.status_code] == [401, 401, 200]
            assert running.sim.row_count("secure") == 1


async def test_webhook_body_over_100kb_is_413() -> None:
    """A body over 100,000 bytes gets 413 (Clay documents 400, PostHog saw 413); at it, 200."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            headers = {"content-type": "application/json"}
            at_limit = b'"' + b"x" * 99_998 + b'"'
            assert len(at_limit) == 100_000
            ok = await client.post("/v3/sources/webhook/w", content=at_limit, headers=headers)
            big = await client.post(
                "/v3/sources/webhook/w", content=at_limit + b" ", headers=headers
            )
            assert (ok.status_code, big.status_code) == (200, 413)
            assert running.sim.row_count("w") == 1


async def test_webhook_rate_limit_is_429_with_retry_after_and_clay_body() -> None:
    """Past the burst of 20 the workspace answers 429, Retry-After: 1, TooManyRequests body."""
    with trio.fail_after(TIMEOUT):
        async with serving(Simulator(clock=ManualClock())) as (running, client):
            statuses = [(await push(client, f"w{i % 3}", {"i": i})).status_code for i in range(20)]
            limited = await push(client, "w0", {"i": 20})
            assert statuses == [200] * 20
            assert limited.status_code == 429
            assert limited.headers["retry-after"] == "1"
            body = limited.json()
            assert body["type"] == "TooManyRequests"
            assert body["message"]
            assert body["details"]["limit_per_second"] == 10
            assert sum(running.sim.row_count(f"w{i}") for i in range(3)) == 20


async def test_webhook_bucket_refills_at_ten_per_second() -> None:
    """After the burst is spent, each 0.1 s of (injected) time admits exactly one more row."""
    clock = ManualClock()
    with trio.fail_after(TIMEOUT):
        async with serving(Simulator(clock=clock)) as (running, client):
            for i in range(20):
                await push(client, "w", {"i": i})
            assert (await push(client, "w", {})).status_code == 429
            clock.now += 0.1
            assert (await push(client, "w", {})).status_code == 200
            assert (await push(client, "w", {})).status_code == 429
            clock.now += 1.0
            statuses = [(await push(client, "w", {})).status_code for _ in range(11)]
            assert statuses == [200] * 10 + [429]
            assert running.sim.row_count("w") == 31


async def test_webhook_lifetime_cap_is_403_record_limit() -> None:
    """Once a webhook has stored `cap` rows it answers 403 'Record limit reached for webhook'."""
    with trio.fail_after(TIMEOUT):
        async with serving(record_cap=3) as (running, client):
            statuses = [(await push(client, "w", {"i": i})).status_code for i in range(3)]
            over = await push(client, "w", {"i": 3})
            assert statuses == [200] * 3
            assert (over.status_code, over.json()) == (
                403,
                {"message": "Record limit reached for webhook"},
            )
            assert running.sim.row_count("w") == 3


async def test_public_api_needs_the_key_and_serves_me() -> None:
    """/public/v0 refuses a missing or wrong clay-api-key with 401 {message}; /me answers 200."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (_running, client):
            missing = await client.get("/public/v0/me")
            wrong = await client.get("/public/v0/me", headers={"clay-api-key": "bad"})
            me = await client.get("/public/v0/me", headers=KEY)
            assert (missing.status_code, wrong.status_code) == (401, 401)
            assert "message" in wrong.json()
            assert me.status_code == 200
            assert {"workspace", "user"} <= me.json().keys()


async def test_routine_start_is_202_then_polls_202_twice_then_200() -> None:
    """A routine run starts with 202 + run_id, polls 202 running K=2 times, then 200 completed."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            start = await client.post("/public/v0/routines/r1/runs", json={"q": 1}, headers=KEY)
            assert start.status_code == 202
            run_id = start.json()["run_id"]
            url = f"/public/v0/routines/r1/runs/{run_id}"
            polls = [await client.get(url, headers=KEY) for _ in range(3)]
            assert [p.status_code for p in polls] == [202, 202, 200]
            assert polls[0].json()["status"] == "running"
            done = polls[2].json()
            assert done["status"] == "completed"
            assert done["result"]["input"] == {"q": 1}
            unknown = await client.get("/public/v0/routines/r1/runs/run_nope", headers=KEY)
            assert unknown.status_code == 404
            assert running.sim.stats.routine_runs_started == 1


async def test_public_api_rate_limit_is_429_with_retry_after() -> None:
    """The public API's own bucket answers 429 with Retry-After once spent."""
    sim = Simulator(SimSettings(public_rate=1, public_burst=2), clock=ManualClock())
    with trio.fail_after(TIMEOUT):
        async with serving(sim) as (_running, client):
            statuses = [
                (await client.get("/public/v0/me", headers=KEY)).status_code for _ in range(2)
            ]
            limited = await client.get("/public/v0/me", headers=KEY)
            assert statuses == [200, 200]
            assert limited.status_code == 429
            assert limited.headers["retry-after"] == "1"
            assert "message" in limited.json()


async def test_error_rate_is_seeded_and_status_configurable() -> None:
    """error_rate answers that fraction with error_status, identically for the same seed."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            runs = []
            for _ in range(2):
                running.sim.set_faults(Faults(error_rate=0.5, error_status=503, seed=3))
                runs.append([(await push(client, "w", {})).status_code for _ in range(16)])
            assert runs[0] == runs[1]
            assert set(runs[0]) == {200, 503}
            assert running.sim.row_count("w") == 2 * runs[0].count(200)


async def test_burst_answers_the_next_n_requests_with_errors() -> None:
    """A burst of 3 fails exactly the next 3 requests, then service resumes."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            running.sim.set_faults(Faults(burst=3, error_status=502))
            statuses = [(await push(client, "w", {})).status_code for _ in range(5)]
            assert statuses == [502, 502, 502, 200, 200]
            assert running.sim.stats.responses["webhook", 502] == 3


async def test_latency_delays_the_answer() -> None:
    """With latency set, a request is seen sleeping in the delay before it is answered 200."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client), trio.open_nursery() as nursery:
            running.sim.set_faults(Faults(latency=0.2))
            answers: list[int] = []

            async def call() -> None:
                answers.append((await push(client, "w", {})).status_code)

            nursery.start_soon(call)
            await running.sim.wait_until(lambda s: s.stats.delayed == 1)
            assert answers == []
            await running.sim.wait_until(lambda s: s.stats.responses["webhook", 200] == 1)
        assert answers == [200]


async def test_hang_holds_until_cleared_then_answers() -> None:
    """A hung request stays unanswered until the faults are cleared, then is handled normally."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client), trio.open_nursery() as nursery:
            sim = running.sim
            sim.set_faults(Faults(hang=True, path_prefix="/v3/"))
            answers: list[int] = []

            async def call() -> None:
                answers.append((await push(client, "w", {})).status_code)

            nursery.start_soon(call)
            await sim.wait_until(lambda s: s.stats.hanging == 1)
            me = await client.get("/public/v0/me", headers=KEY)
            assert me.status_code == 200  # outside the fault's path prefix
            assert (answers, sim.stats.in_flight) == ([], 1)
            sim.clear_faults()
        assert answers == [200]
        assert (sim.row_count("w"), sim.stats.hanging, sim.stats.in_flight) == (1, 0, 0)


async def test_hang_is_released_when_the_client_disconnects() -> None:
    """A client giving up on a hung request frees the handler; the server keeps serving."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            sim = running.sim
            sim.set_faults(Faults(hang=True))
            async with (
                httpx.AsyncClient(base_url=running.url) as quitter,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(push, quitter, "w", {})
                await sim.wait_until(lambda s: s.stats.hanging == 1)
                nursery.cancel_scope.cancel()
            await sim.wait_until(lambda s: s.stats.in_flight == 0)
            assert (sim.stats.hanging, sim.stats.abandoned["webhook"]) == (0, 1)
            sim.clear_faults()
            assert (await push(client, "w", {})).status_code == 200
            assert sim.row_count("w") == 1


async def test_hang_is_released_when_the_server_stops() -> None:
    """Stopping the simulator ends a hung request promptly: the client sees a connection error."""
    errors: list[Exception] = []
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:

            async def call(url: str) -> None:
                try:
                    await client.post(url, json={})
                except httpx.TransportError as exc:
                    errors.append(exc)

            async with open_simulator() as running:
                running.sim.set_faults(Faults(hang=True))
                nursery.start_soon(call, running.webhook_url("w"))
                await running.sim.wait_until(lambda s: s.stats.hanging == 1)
    assert len(errors) == 1
    assert isinstance(errors[0], CONNECTION_ERRORS)


@pytest.mark.parametrize(("mode", "stored"), [("before_store", 0), ("after_store", 1)])
async def test_reset_drops_the_connection_without_an_answer(mode: str, stored: int) -> None:
    """A reset aborts the connection (a connection error, not a 500); after_store keeps the row."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            sim = running.sim
            sim.set_faults(Faults(reset=mode))  # type: ignore[arg-type]
            with pytest.raises(CONNECTION_ERRORS):
                await push(client, "w", {"a": 1})
            assert sim.row_count("w") == stored
            assert sim.stats.resets["webhook"] == 1
            assert sum(n for (kind, _), n in sim.stats.responses.items() if kind == "webhook") == 0
            sim.clear_faults()
            assert (await push(client, "w", {"a": 2})).status_code == 200


async def test_outage_unavailable_fails_clay_paths_but_not_control() -> None:
    """A 503 outage answers every Clay request 503 while the control endpoint keeps working."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            running.sim.set_faults(Faults(outage="unavailable"))
            hook = await push(client, "w", {})
            me = await client.get("/public/v0/me", headers=KEY)
            stats = await client.get("/_sim/stats")
            assert (hook.status_code, me.status_code, stats.status_code) == (503, 503, 200)
            assert stats.json()["responses"] == {"webhook": {"503": 1}, "public": {"503": 1}}
            assert running.sim.row_count("w") == 0


async def test_outage_reset_drops_every_clay_connection_in_scope() -> None:
    """A reset outage scoped to webhooks drops their connections; the public API still answers."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (running, client):
            running.sim.set_faults(Faults(outage="reset", path_prefix="/v3/sources/webhook/"))
            for _ in range(2):
                with pytest.raises(CONNECTION_ERRORS):
                    await push(client, "w", {})
            assert (await client.get("/public/v0/me", headers=KEY)).status_code == 200
            assert running.sim.stats.resets["webhook"] == 2


async def test_control_endpoint_drives_faults_webhooks_rows_and_reset() -> None:
    """Over HTTP a separate process can set faults, configure webhooks, read rows and reset."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (_running, client):
            bad = await client.post("/_sim/faults", json={"eror_rate": 1})
            assert bad.status_code == 400
            assert "unknown Faults key" in bad.json()["message"]
            set_ = await client.post("/_sim/faults", json={"burst": 1, "error_status": 500})
            assert set_.json()["burst"] == 1
            assert (await push(client, "w", {"n": 0})).status_code == 500
            configured = await client.post("/_sim/webhooks/w", json={"token": "t"})
            assert configured.status_code == 200
            assert (await push(client, "w", {"n": 1})).status_code == 401
            auth = {"x-clay-webhook-auth": "t"}
            for n in (2, 3):
                assert (await push(client, "w", {"n": n}, headers=auth)).status_code == 200
            rows = (await client.get("/_sim/webhooks/w/rows", params={"after": 1})).json()
            assert rows["stored"] == 2
            assert [row["body"] for row in rows["rows"]] == [{"n": 3}]
            stats = (await client.get("/_sim/stats")).json()
            assert stats["webhooks"]["w"]["stored"] == 2
            assert stats["responses"]["webhook"] == {"200": 2, "401": 1, "500": 1}
            assert stats["clay_requests"] == 4
            settings = await client.post("/_sim/settings", json={"record_cap": 2})
            assert settings.json()["record_cap"] == 2
            assert (await push(client, "w", {}, headers=auth)).status_code == 403
            assert (await client.post("/_sim/reset")).status_code == 200
            after = (await client.get("/_sim/stats")).json()
            assert (after["clay_requests"], after["webhooks"]["w"]["stored"]) == (0, 0)


async def test_subprocess_mode_writes_the_port_file_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """`python -m claykiln.daemon.simulator --port-file F` serves on F's port; SIGTERM -> 0."""
    port_file = tmp_path / "sim.port"
    argv = [sys.executable, "-m", "claykiln.daemon.simulator", "--port", "0"]
    argv += ["--port-file", str(port_file), "--webhook", "w:tok", "--record-cap", "1"]
    proc = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        with trio.fail_after(TIMEOUT):
            said = b""
            while b"listening" not in said:  # printed after the port file is in place
                chunk = await proc.stderr.receive_some()
                assert chunk, f"simulator exited early: {said!r}"
                said += chunk
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            async with httpx.AsyncClient(base_url=url) as client:
                auth = {"x-clay-webhook-auth": "tok"}
                assert (await push(client, "w", {}, headers=auth)).status_code == 200
                assert (await push(client, "w", {}, headers=auth)).status_code == 403
                stats = json.loads((await client.get("/_sim/stats")).content)
                assert stats["webhooks"]["w"]["stored"] == 1
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
