"""The upstream executor against real HTTP servers on 127.0.0.1 (real clock, short timeouts)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from http_fixture import (
    http_server,
    raw_server,
    refused_port,
    running_pool,
    unaccepting_port,
)
from structlog.testing import capture_logs

from claykiln.actors import upstream
from claykiln.actors.errors import (
    BadRequestRefusal,
    InternalRefusal,
    Refusal,
    ShuttingDownRefusal,
    TimeoutRefusal,
    UpstreamRefusal,
)
from claykiln.actors.upstream import (
    HTTP_CLIENTS,
    HttpRequest,
    TimeoutClasses,
    UpstreamFailure,
    UpstreamPool,
    UpstreamSettings,
    UpstreamTimeout,
)

SECRET = "sk-live-THE-SECRET-7f3a"
AUTH = "x-clay-webhook-auth"
# The connect class is only a safety net in these tests: a connect to 127.0.0.1 is at once, yet
# a loaded machine can stall one past 0.2 s (test_connect_timeout_stage sets its own 0.2 s).
FAST = TimeoutClasses(connect=2.0, request=0.2)


HTTP_CLIENT = "h11"  # set per test by the autouse fixture below


@pytest.fixture(autouse=True, params=HTTP_CLIENTS)
def http_client(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs against both HTTP clients an upstream can use."""
    global HTTP_CLIENT  # read by settings(), one test at a time
    HTTP_CLIENT = request.param
    yield request.param
    HTTP_CLIENT = "h11"


def settings(base_url: str, **kw: Any) -> UpstreamSettings:
    args: dict[str, Any] = {
        "name": "clay",
        "base_url": base_url,
        "auth_header": AUTH,
        "credential": SECRET,
        "timeouts": FAST,
        "http_client": HTTP_CLIENT,
        **kw,
    }
    return UpstreamSettings(**args)


def echoed_headers(body: bytes) -> list[tuple[str, str]]:
    return [(k, v) for k, v in json.loads(body)["headers"]]


def assert_no_secret(error: Refusal) -> None:
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    assert SECRET not in json.dumps(error.to_wire())


async def test_round_trip_injects_auth_header() -> None:
    """A 200 round trip carries the credential in the auth header and the JSON body."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            request = HttpRequest("POST", "/echo/rows", query={"a": "1"}, json={"row": [1, 2]})
            response = await pool.execute(request, timeout=2.0)
    echo = response.json()
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert (AUTH, SECRET) in echoed_headers(response.body)
    assert ("content-type", "application/json") in echoed_headers(response.body)
    assert ("user-agent", "claykiln") in echoed_headers(response.body)
    assert echo["method"] == "POST"
    assert echo["query"] == {"a": "1"}
    assert json.loads(echo["body"]) == {"row": [1, 2]}
    assert response.duration > 0


async def test_caller_cannot_forge_auth_header() -> None:
    """A caller-supplied auth header (any case) is replaced by the configured credential."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            request = HttpRequest("GET", "/echo", headers={"X-Clay-Webhook-Auth": "forged"})
            response = await pool.execute(request, timeout=2.0)
    auth = [v for k, v in echoed_headers(response.body) if k == AUTH]
    assert auth == [SECRET]


async def test_json_null_body_is_sent() -> None:
    """json=None sends a JSON null body (None is a value, not 'no body')."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            response = await pool.execute(HttpRequest("PUT", "/echo", json=None), timeout=2.0)
    assert response.json()["body"] == "null"


@pytest.mark.parametrize("value", ["../../evil", "@evil.com", "//evil.com", "http://evil", "%2F"])
async def test_attack_path_reaches_same_host_encoded(value: str) -> None:
    """A hostile path value reaches our server as one encoded segment of /echo/."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            path = upstream.render_path("/echo/{id}", {"id": value})
            response = await pool.execute(HttpRequest("GET", path), timeout=2.0)
    assert response.json()["raw_path"] == "/echo/" + urllib.parse.quote(value, safe="")


async def test_unicode_path_value_encoded() -> None:
    """A unicode path value arrives UTF-8 percent-encoded in one segment."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            path = upstream.render_path("/echo/{id}", {"id": "évil/ü"})
            response = await pool.execute(HttpRequest("GET", path), timeout=2.0)
    assert response.json()["raw_path"] == "/echo/%C3%A9vil%2F%C3%BC"


async def test_error_status_returned_and_client_reused() -> None:
    """A 500 is a response (not an error) and its connection is reused for the next call."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            first = await pool.execute(HttpRequest("GET", "/status/500"), timeout=2.0)
            second = await pool.execute(
                HttpRequest("GET", "/status/429", query={"retry_after": "3"}), timeout=2.0
            )
            stats = pool.stats()
    assert (first.status, second.status, second.retry_after()) == (500, 429, 3.0)
    assert stats["created"] == 1
    assert stats["closed_after_error"] == 0
    assert (stats["in_use"], stats["idle"], stats["requests"]) == (0, 1, 2)


async def test_hanging_upstream_times_out_at_class_timeout() -> None:
    """A hang hits the call timeout: stage 'request', and the server sees the disconnect."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            with pytest.raises(TimeoutRefusal) as info:
                await pool.execute(HttpRequest("GET", "/hang"), timeout=0.2)
            # Every request the server held sees its disconnect. (On a loaded machine the 0.2 s
            # can end before the request reached the app at all; then there is none to wait for.)
            await server.wait_disconnects(server.hanging)
            stats = pool.stats()
    assert info.value.details is not None
    assert info.value.details["stage"] == "request"
    assert info.value.details["sent"] is True
    assert info.value.details["timeout"] == 0.2
    assert (stats["in_use"], stats["idle"], stats["closed_after_error"]) == (0, 0, 1)
    assert_no_secret(info.value)


async def test_hanging_upstream_stops_at_caller_deadline() -> None:
    """When the caller's deadline comes before the timeout, the stage is 'deadline'."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            deadline = trio.current_time() + 0.1
            with pytest.raises(TimeoutRefusal) as info:
                await pool.execute(
                    HttpRequest("GET", "/hang"), timeout=30.0, stage_deadline=deadline
                )
            await server.wait_disconnects(server.hanging)
    assert info.value.details is not None
    assert info.value.details["stage"] == "deadline"


async def test_expired_deadline_fails_before_connecting() -> None:
    """A deadline already past fails at once without opening a connection."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            past = trio.current_time() - 1
            with pytest.raises(TimeoutRefusal) as info:
                await pool.execute(HttpRequest("GET", "/json"), timeout=5.0, stage_deadline=past)
            assert pool.stats()["created"] == 0
    assert info.value.details is not None
    assert (info.value.details["stage"], info.value.details["sent"]) == ("deadline", False)


async def test_connect_timeout_stage() -> None:
    """A connect that never completes fails with stage 'connect' and sent=False."""
    with trio.fail_after(5), unaccepting_port() as port:
        base = f"http://127.0.0.1:{port}"
        async with running_pool(settings(base, timeouts=TimeoutClasses(connect=0.2))) as pool:
            with pytest.raises(TimeoutRefusal) as info:
                await pool.execute(HttpRequest("GET", "/json"), timeout=5.0)
    assert info.value.details is not None
    assert (info.value.details["stage"], info.value.details["sent"]) == ("connect", False)
    assert isinstance(info.value, UpstreamTimeout)
    assert (info.value.sent, info.value.retryable) == (False, True)


async def test_cancellation_storm_leaks_nothing() -> None:
    """200 calls cut at 50 ms on a hang, then 20 calls at once all succeed; nothing leaks."""
    with trio.fail_after(10):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            timeouts: list[TimeoutRefusal] = []

            async def doomed() -> None:
                deadline = trio.current_time() + 0.05
                try:
                    await pool.execute(
                        HttpRequest("GET", "/hang"), timeout=5, stage_deadline=deadline
                    )
                except TimeoutRefusal as exc:
                    timeouts.append(exc)

            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(doomed)
            assert pool.stats()["in_use"] == 0
            statuses: list[int] = []

            async def ordinary() -> None:
                response = await pool.execute(HttpRequest("GET", "/json"), timeout=5.0)
                statuses.append(response.status)

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(ordinary)
            await server.wait_disconnects(server.hanging)
            stats = pool.stats()
    # A call that had a connection was cut mid-call (sent, or at its connect) and its connection
    # was closed. The others never had one: they waited for a free connection (phase "pool"),
    # or, on a loaded machine, their 50 ms were gone before execute began (refused at once).
    mid_call = [e for e in timeouts if e.details.get("sent") or e.details.get("stage") == "connect"]
    assert all(e.details.get("sent") is False for e in timeouts if e not in mid_call)
    assert len(timeouts) == 200
    assert statuses == [200] * 20
    assert stats["in_use"] == 0
    assert stats["closed_after_error"] == len(mid_call)
    assert server.disconnects == server.hanging <= len(mid_call)
    assert stats["idle"] <= stats["max_connections"]


async def test_outer_cancellation_closes_the_client() -> None:
    """A caller cancelled from outside propagates Cancelled and its client is not reused."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            scope = trio.CancelScope()

            async def cancel_once_held() -> None:
                # Cancel when the server holds the request, not after a fixed time: on a loaded
                # machine a fixed 0.1 s could end before the request reached the server at all.
                await server.wait_hanging(1)
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_once_held)
                with scope:
                    await pool.execute(HttpRequest("GET", "/hang"), timeout=30.0)
            await server.wait_disconnects(1)
            stats = pool.stats()
    assert scope.cancelled_caught
    assert (stats["in_use"], stats["idle"], stats["closed_after_error"]) == (0, 0, 1)


async def test_waiters_queue_for_a_free_connection() -> None:
    """Beyond max_connections callers wait FIFO; one whose deadline ends first gets phase pool."""
    with trio.fail_after(5):
        async with (
            http_server() as server,
            running_pool(settings(server.base_url, max_connections=1)) as pool,
        ):
            order: list[str] = []
            errors: list[TimeoutRefusal] = []

            async def call(tag: str, path: str, budget: float) -> None:
                try:
                    await pool.execute(HttpRequest("GET", path), timeout=budget)
                    order.append(tag)
                except TimeoutRefusal as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                # The one connection stays taken until the impatient caller has given up, not
                # for a fixed time (a server answering after 150 ms could be done, on a loaded
                # machine, before the impatient caller even started its 50 ms).
                nursery.start_soon(call, "slow", "/gate", 2.0)
                await server.wait_gated(1)
                nursery.start_soon(call, "second", "/json", 2.0)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(call, "third", "/json", 2.0)
                await trio.testing.wait_all_tasks_blocked()
                await call("impatient", "/json", 0.05)  # queued last; returns once refused
                server.gate.set()
            stats = pool.stats()
    assert order == ["slow", "second", "third"]
    assert len(errors) == 1
    assert errors[0].details is not None
    assert errors[0].details["phase"] == "pool"
    assert errors[0].details["sent"] is False
    assert stats["created"] == 1


@pytest.mark.parametrize(("path", "kind"), [("/reset", "reset"), ("/close", "protocol")])
async def test_broken_connections_map_to_kinds(path: str, kind: str) -> None:
    """A TCP reset maps to kind 'reset', a close without response to 'protocol'; both sent."""
    with trio.fail_after(5):
        async with raw_server() as base, running_pool(settings(base)) as pool:
            with pytest.raises(UpstreamRefusal) as info:
                await pool.execute(HttpRequest("GET", path), timeout=2.0)
            stats = pool.stats()
    assert info.value.details is not None
    assert info.value.details["kind"] == kind
    assert (info.value.details["sent"], info.value.details["retryable"]) == (True, True)
    assert stats["closed_after_error"] == 1
    assert_no_secret(info.value)


async def test_garbage_response_is_protocol_error() -> None:
    """Bytes that are not HTTP map to kind 'protocol'."""
    with trio.fail_after(5):
        async with raw_server() as base, running_pool(settings(base)) as pool:
            with pytest.raises(UpstreamRefusal) as info:
                await pool.execute(HttpRequest("GET", "/garbage"), timeout=2.0)
    assert info.value.details is not None
    assert info.value.details["kind"] == "protocol"


async def test_refused_connection_is_connect_not_sent() -> None:
    """A closed port maps to kind 'connect' with sent=False; no credential in logs or errors."""
    base = f"http://127.0.0.1:{refused_port()}"
    with trio.fail_after(5), capture_logs() as logs:
        async with running_pool(settings(base)) as pool:
            with pytest.raises(UpstreamRefusal) as info:
                await pool.execute(HttpRequest("POST", "/rows", json={"a": 1}), timeout=2.0)
    assert info.value.details is not None
    assert info.value.details["kind"] == "connect"
    assert (info.value.details["sent"], info.value.details["retryable"]) == (False, True)
    assert isinstance(info.value, UpstreamFailure)
    assert (info.value.sent, info.value.retryable) == (False, True)
    assert_no_secret(info.value)
    assert logs, "the failure was logged"
    assert SECRET not in repr(logs)
    assert SECRET not in repr(pool)


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_oversized_body_refused(monkeypatch: pytest.MonkeyPatch, chunked: str) -> None:
    """A body over the cap (declared or streamed) is too_large, not retryable; client dropped."""
    monkeypatch.setattr(upstream, "MAX_BODY_BYTES", 100_000)
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            query = {"bytes": "200000", "chunked": chunked}
            with pytest.raises(UpstreamRefusal) as info:
                await pool.execute(HttpRequest("GET", "/big", query=query), timeout=2.0)
            ok = await pool.execute(
                HttpRequest("GET", "/big", query={"bytes": "100000"}), timeout=2.0
            )
            stats = pool.stats()
    assert info.value.details is not None
    assert (info.value.details["kind"], info.value.details["retryable"]) == ("too_large", False)
    assert len(ok.body) == 100_000
    assert (stats["created"], stats["closed_after_error"]) == (2, 1)


async def test_path_leaving_base_refused_before_sending() -> None:
    """A path that climbs out of the base URL is a BadRequestRefusal; nothing is sent."""
    with trio.fail_after(5):
        async with (
            http_server() as server,
            running_pool(settings(server.base_url + "/echo")) as pool,
        ):
            with pytest.raises(BadRequestRefusal):
                await pool.execute(HttpRequest("GET", "/../json"), timeout=2.0)
    assert server.paths == []


async def test_lifecycle_refuses_calls_outside_run() -> None:
    """Before run() a call is an InternalRefusal; after run() stops it is ShuttingDownRefusal and the
    idle clients are closed."""
    async with http_server() as server:
        pool = UpstreamPool(settings(server.base_url))
        with pytest.raises(InternalRefusal):
            await pool.execute(HttpRequest("GET", "/json"), timeout=1.0)
        with trio.fail_after(5):
            async with running_pool(settings(server.base_url)) as pool:
                await pool.execute(HttpRequest("GET", "/json"), timeout=2.0)
                assert pool.stats()["idle"] == 1
            with pytest.raises(ShuttingDownRefusal):
                await pool.execute(HttpRequest("GET", "/json"), timeout=1.0)
    assert pool.stats()["idle"] == 0
    assert pool.stats()["phase"] == "stopped"


@pytest.mark.parametrize(
    "request_",
    [
        HttpRequest("GET", "/json", headers={"x-name": "évil"}),
        HttpRequest("POST", "/json", json={"when": object()}),
    ],
)
async def test_unencodable_request_refused_before_connecting(request_: HttpRequest) -> None:
    """A non-ASCII header value or a non-JSON body is a BadRequestRefusal; no connection is opened."""
    with trio.fail_after(5):
        async with http_server() as server, running_pool(settings(server.base_url)) as pool:
            with pytest.raises(BadRequestRefusal):
                await pool.execute(request_, timeout=2.0)
            assert (pool.stats()["created"], pool.stats()["in_use"]) == (0, 0)
