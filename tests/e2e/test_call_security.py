"""Security end to end: secrets stay out of logs and replies; callers cannot steer requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
from kiln_harness import API_KEY, WEBHOOK_TOKEN, KilnProcess, clay_config

from claykiln.daemon import BadRequest, KilnError, TrioClient
from claykiln.daemon.simulator import Faults, RunningSimulator

Factory = Callable[..., KilnProcess]

SECRETS = (API_KEY, WEBHOOK_TOKEN)

HOSTILE_IDS = [
    "../../evil",
    "@evil.com",
    "http://evil.com/x",
    "//evil.com",
    "%2e%2e",
    "%2F..%2F",
    "evil.com:80",
    "?x=1#frag",
    "\\evil",
    "a\r\nHost: evil.com",
    "é",
]
REFUSED_IDS = ["..", ".", ""]


def _debug_config(simulator: RunningSimulator, **kw: Any) -> str:
    text = clay_config(simulator.url, **kw)
    assert 'log_level = "info"' in text
    return text.replace('log_level = "info"', 'log_level = "debug"')


def _push(webhook_id: str, n: int = 0) -> dict[str, Any]:
    return {"path_params": {"webhook_id": webhook_id}, "json": {"n": n}}


async def test_credentials_never_reach_the_log_or_a_reply(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """At debug level, through 401s, 5xx, resets, timeouts and refusals: no secret leaks."""
    proc = kiln(_debug_config(simulator))
    await proc.start()
    sim = simulator.sim
    sim.configure_webhook("locked", token="a-different-token")
    seen: list[Any] = []

    async def attempt(client: TrioClient, operation: str, **kw: Any) -> None:
        try:
            seen.append(await client.call(operation, **kw))
        except KilnError as exc:
            seen.append((exc.code, exc.message, exc.details, repr(exc), str(exc)))

    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            await attempt(client, "me")
            await attempt(client, "push_row", **_push("w1"))
            await attempt(client, "push_row", **_push("locked"))  # 401: wrong webhook token
            await attempt(
                client, "push_row", headers={"X-Clay-Webhook-Auth": "forged"}, **_push("w1")
            )
            await attempt(client, "me", headers={"clay-api-key": "forged"})
            # A framing header is the daemon's: refused with bad_request.
            await attempt(client, "push_row", headers={"content-length": "0"}, **_push("w1"))
            sim.set_faults(Faults(burst=2, error_status=503))
            await attempt(client, "me")
            await attempt(client, "push_row", **_push("w1"))
            sim.set_faults(Faults(reset="before_store"))
            await attempt(client, "me")
            await attempt(client, "push_row", **_push("w1"))
            sim.set_faults(Faults(hang=True))
            await attempt(client, "me", deadline_ms=300)
            sim.clear_faults()
            sim.update_settings(attrs.evolve(sim.settings, api_key="rotated-key"))
            await attempt(client, "me")  # 401: the daemon's API key is no longer valid
            seen.append(await client.status())
            seen.append(await client.breaker_list())
            seen.append(await client.hello())
    assert await proc.stop() == 0
    codes = [item[0] for item in seen if isinstance(item, tuple)]
    assert codes.count("bad_request") >= 2
    assert "upstream_error" in codes and "timeout" in codes
    assert [e["status"] for e in proc.events("upstream.credentials_rejected")] == [401, 401]
    assert any(e.get("level") == "debug" for e in proc.events())
    replies = repr(seen)
    log = proc.log_text()
    for secret in SECRETS:
        assert secret not in replies
        assert secret not in log
        assert secret.encode() not in proc.log_path.read_bytes()


async def test_path_parameters_cannot_steer_the_request(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Hostile path values stay inside their segment at the simulator, or are refused."""
    proc = kiln(clay_config(simulator.url))
    await proc.start()
    sim = simulator.sim
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            for value in HOSTILE_IDS:
                before = sim.stats.received["webhook"]
                not_found = sim.stats.responses["webhook", 404]
                result = await client.call("push_row", **_push(value))
                # The simulator (the only host there is) got exactly this request...
                assert sim.stats.received["webhook"] == before + 1, value
                if "/" in value:
                    # ...decoded its path into more segments than a webhook id has: its own 404.
                    assert result["status"] == 404, value
                    assert result["body"] == {"message": "Not found"}
                    assert sim.stats.responses["webhook", 404] == not_found + 1
                else:
                    # ...and found the whole value, verbatim, as the webhook id.
                    assert result["status"] == 200, value
                    assert sim.row_count(value) == 1, value
            for value in REFUSED_IDS:
                before = sim.stats.clay_requests
                with pytest.raises(BadRequest, match="webhook_id"):
                    await client.call("push_row", **_push(value))
                assert sim.stats.clay_requests == before
            # A dot-dot run id cannot turn a poll into another public endpoint (/public/v0/me).
            poll = await client.call(
                "poll_routine", path_params={"routine_id": "r1", "run_id": "../../../me"}
            )
            assert poll["status"] == 404
            assert "workspace" not in repr(poll["body"])
            with pytest.raises(BadRequest, match="unexpected path parameter"):
                await client.call("me", path_params={"host": "evil.com"})
    assert set(sim.webhook_ids()) == {v for v in HOSTILE_IDS if "/" not in v}
    assert await proc.stop() == 0


async def test_the_credential_header_cannot_be_overridden(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """A caller header naming the operation's credential header is refused in any case."""
    proc = kiln(clay_config(simulator.url))
    await proc.start()
    sim = simulator.sim
    sim.configure_webhook("locked", token="a-different-token")
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            for name in ("x-clay-webhook-auth", "X-Clay-Webhook-Auth", "X-CLAY-WEBHOOK-AUTH"):
                with pytest.raises(BadRequest, match="credential") as info:
                    await client.call(
                        "push_row", headers={name: "a-different-token"}, **_push("locked")
                    )
                assert "a-different-token" not in str(info.value)
            with pytest.raises(BadRequest, match="credential"):
                await client.call("me", headers={"Clay-Api-Key": "forged"})
            assert sim.stats.clay_requests == 0
            assert sim.row_count("locked") == 0
            # Other headers pass, and the daemon's own credential is what Clay checks.
            result = await client.call("push_row", headers={"x-request-id": "r-1"}, **_push("w1"))
    assert result["status"] == 200
    assert sim.rows("w1")[0].headers["x-request-id"] == "r-1"
    assert await proc.stop() == 0


@pytest.mark.parametrize("header", ["host", "content-length", "transfer-encoding"])
async def test_framing_and_host_headers_are_refused(
    kiln: Factory, simulator: RunningSimulator, header: str
) -> None:
    """A caller cannot set Host or the message framing headers: bad_request, nothing sent."""
    proc = kiln(clay_config(simulator.url))
    await proc.start()
    value = {"host": "evil.com", "content-length": "0", "transfer-encoding": "chunked"}[header]
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            with pytest.raises(BadRequest):
                await client.call("push_row", headers={header: value}, **_push("w1"))
    assert simulator.sim.stats.clay_requests == 0
    assert await proc.stop() == 0


async def test_a_malformed_header_is_a_bad_request_and_never_trips_the_breaker(
    kiln: Factory, simulator: RunningSimulator
) -> None:
    """Header injection attempts are the caller's fault: bad_request, breaker untouched."""
    proc = kiln(clay_config(simulator.url, volume=4, attempts=3))
    await proc.start()
    with trio.fail_after(30):
        async with TrioClient(str(proc.socket)) as client:
            for _ in range(4):
                with pytest.raises(BadRequest):
                    await client.call("me", headers={"x-note": "a\r\nclay-api-key: forged"})
            views = {v["key"]: v for v in await client.breaker_list()}
    assert (views["clay"]["state"], views["clay"]["failures"]) == ("closed", 0)
    assert simulator.sim.stats.clay_requests == 0
    assert await proc.stop() == 0
