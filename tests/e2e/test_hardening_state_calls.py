"""Caller-reachable errors on the call path, against real daemon processes: each one a precise
error code, never ``internal`` with a traceback. A 70 KB path parameter or query value is
``bad_request`` naming the URL limit; an upstream JSON body nested 100,000 deep is
``upstream_error`` and counts as the upstream's failure (the breaker opens); NaN and Infinity
are ``bad_request`` (nothing goes upstream); a deadline of 1e-300 ms is ``timeout``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial

import pytest
import trio
from kiln_harness import KilnProcess, clay_config

from claykiln.daemon import BadRequest, BreakerOpen, KilnTimeout, TrioClient, UpstreamError
from claykiln.daemon.simulator import RunningSimulator

Factory = Callable[..., KilnProcess]
DEEP = 100_000
URL_LIMIT = "65536"

DEEP_UPSTREAM = """
[upstreams.deep]
base_url = "{url}"
breaker = {{ error_threshold = 0.99, volume_threshold = 1000, window = "10s", reset_timeout = "30s", consecutive_failures = 3 }}
retry = {{ attempts = 1 }}

[operations.deep]
upstream = "deep"
method = "GET"
path = "/deep"
lane = "normal"
timeout = "request"
repeat_safe = true
idempotency = "off"

[operations.shallow]
upstream = "deep"
method = "GET"
path = "/shallow"
lane = "normal"
timeout = "request"
repeat_safe = true
idempotency = "off"
"""


async def serve_json(stream: trio.SocketStream) -> None:
    """One HTTP/1.1 exchange: GET /deep answers 200 with a JSON array nested DEEP levels,
    anything else 200 with a shallow one; then the connection closes."""
    async with stream:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            head += chunk
        deep = head.startswith(b"GET /deep ")
        body = b"[" * DEEP + b"]" * DEEP if deep else b'[[["fine"]]]'
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


@pytest.fixture
async def json_server() -> AsyncIterator[str]:
    """A tiny HTTP server on 127.0.0.1 serving a pathologically deep JSON body; its URL."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_json, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


@pytest.fixture
async def daemon(
    kiln: Factory, simulator: RunningSimulator, json_server: str
) -> AsyncIterator[KilnProcess]:
    proc = kiln(clay_config(simulator.url, extra=DEEP_UPSTREAM.format(url=json_server)))
    await proc.start()
    yield proc
    assert await proc.stop() == 0
    assert "Traceback" not in proc.log_text(), proc.log_tail()
    assert not proc.events("rpc.internal_error")


async def test_huge_path_parameter_is_bad_request_naming_the_limit(daemon: KilnProcess) -> None:
    """A 70 KB path parameter: bad_request naming the 65536-character limit, not internal; the
    message does not echo the value, and the daemon serves on."""
    async with TrioClient(str(daemon.socket)) as client:
        with trio.fail_after(20):
            with pytest.raises(BadRequest) as refused:
                await client.call(
                    "poll_routine", path_params={"routine_id": "r" * 70_000, "run_id": "1"}
                )
            assert URL_LIMIT in refused.value.message
            assert len(refused.value.message) < 400
            assert refused.value.details["limit"] == 65536
            assert (await client.call("me"))["status"] == 200


async def test_huge_multibyte_path_parameter_counts_after_encoding(daemon: KilnProcess) -> None:
    """A 10,000-character path parameter of 3-byte characters is 90,000 after encoding: refused."""
    async with TrioClient(str(daemon.socket)) as client:
        with trio.fail_after(20), pytest.raises(BadRequest) as refused:
            await client.call(
                "poll_routine", path_params={"routine_id": "€" * 10_000, "run_id": "1"}
            )
        assert refused.value.details["size"] > 65536


async def test_huge_query_value_is_bad_request_naming_the_limit(daemon: KilnProcess) -> None:
    """A 70 KB query value: bad_request naming the limit, not internal."""
    async with TrioClient(str(daemon.socket)) as client:
        with trio.fail_after(20):
            with pytest.raises(BadRequest) as refused:
                await client.call("me", query={"q": "x" * 70_000})
            assert URL_LIMIT in refused.value.message
            assert refused.value.details["part"] == "query"
            assert (await client.call("me", query={"q": "x" * 1000}))["status"] == 200


async def test_deeply_nested_upstream_body_is_upstream_error_and_a_failure(
    daemon: KilnProcess,
) -> None:
    """A JSON body nested 100,000 deep: upstream_error (kind body) naming the depth limit, and
    the attempt counts as the upstream's failure: three in a row open the breaker (the old code
    answered internal and recorded a success)."""
    async with TrioClient(str(daemon.socket)) as client:
        with trio.fail_after(30):
            assert (await client.call("shallow"))["body"] == [[["fine"]]]
            for _ in range(3):
                with pytest.raises(UpstreamError) as failed:
                    await client.call("deep")
                details = failed.value.details
                assert details["kind"] == "body"
                assert details["status"] == 200
                assert "deeper than 500 levels" in failed.value.message
                assert len(details["body"]) < 600
            with pytest.raises(BreakerOpen):
                await client.call("shallow")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
async def test_nan_and_infinity_are_bad_request(
    daemon: KilnProcess, simulator: RunningSimulator, bad: float
) -> None:
    """NaN / Infinity in the json argument: bad_request naming where, nothing sent upstream
    (the old code sent them as invalid JSON)."""
    async with TrioClient(str(daemon.socket)) as client:
        with trio.fail_after(20):
            with pytest.raises(BadRequest) as refused:
                await client.call(
                    "push_row",
                    path_params={"webhook_id": "w1"},
                    json={"name": "row", "scores": [1.5, bad]},
                )
            assert "$.scores[1]" in refused.value.message
            assert simulator.sim.row_count("w1") == 0
            ok = await client.call(
                "push_row", path_params={"webhook_id": "w1"}, json={"scores": [1.5]}
            )
            assert ok["status"] == 200
            assert simulator.sim.row_count("w1") == 1


@pytest.mark.parametrize("deadline_ms", [1e-300, 1e-9, 0.0001])
async def test_a_deadline_too_small_to_meet_is_timeout(
    daemon: KilnProcess, deadline_ms: float
) -> None:
    """A deadline that passes before the call can start: timeout (stage deadline), not
    rate_limited with retry_after 0."""
    async with TrioClient(str(daemon.socket)) as client:
        with trio.fail_after(20):
            await client.call("me")  # both gates have published a view
            for operation, params in (("me", {}), ("push_row", {"webhook_id": "w1"})):
                with pytest.raises(KilnTimeout) as timed_out:
                    await client.call(
                        operation,
                        path_params=params,
                        json={"a": 1},
                        deadline_ms=deadline_ms,  # type: ignore[arg-type]
                    )
                assert timed_out.value.details["stage"] == "deadline"
            assert (await client.call("me"))["status"] == 200
