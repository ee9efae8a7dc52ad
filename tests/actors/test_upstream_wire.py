"""The HTTP/1.1 connection (actors/upstream_wire.py) through the pool, against scripted servers.

A scripted server is a real TCP (or TLS) listener on 127.0.0.1 that reads each request whole and
answers the next canned response, so every protocol edge is exact: informational responses,
Connection: close, a server closing an idle keep-alive connection, bytes past a response's end,
compressed bodies, oversized heads, an answer sent before the request body was read, and TLS
with a certificate that does or does not match the host.
"""

from __future__ import annotations

import gzip
import json
import ssl
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import pytest
import trio
import trustme

from claykiln.actors.errors import BadRequestRefusal, TimeoutRefusal, UpstreamRefusal
from claykiln.actors.upstream import HttpRequest, UpstreamPool, UpstreamSettings
from claykiln.actors.upstream_wire import decode_header

SECRET = "wire-secret-7d1f"


@attrs.define
class Reply:
    """One canned answer: raw bytes, then optionally close the connection."""

    data: bytes
    close: bool = False
    read_body: bool = True  # False: answer right after the head, without reading the body
    drip: float = 0.0  # > 0: send one byte at a time, this many seconds apart


@attrs.define
class Script:
    replies: list[Reply]
    requests: list[bytes] = attrs.field(factory=list)
    connections: int = 0
    dripped: int = 0  # bytes a dripping reply got out before the client went away
    closed: int = 0
    closed_event: trio.Event = attrs.field(factory=trio.Event)

    async def wait_closed(self, count: int) -> None:
        while self.closed < count:
            self.closed_event = trio.Event()
            await self.closed_event.wait()


def ok(body: bytes = b'{"ok":true}', *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_request(stream: trio.abc.Stream, buffer: bytearray, *, body: bool) -> bytes | None:
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    if not body:
        return head
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buffer) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buffer += chunk
    request = head + bytes(buffer[:length])
    del buffer[:length]
    return request


async def _serve(script: Script, stream: trio.abc.Stream) -> None:
    script.connections += 1
    buffer = bytearray()
    try:
        while script.replies:
            read_body = script.replies[0].read_body
            request = await _read_request(stream, buffer, body=read_body)
            if request is None or not script.replies:
                return
            reply = script.replies.pop(0)
            script.requests.append(request)
            if reply.drip:
                for index in range(len(reply.data)):
                    await stream.send_all(reply.data[index : index + 1])
                    script.dripped += 1
                    await trio.sleep(reply.drip)
            else:
                await stream.send_all(reply.data)
            if reply.close:
                return
    except trio.BrokenResourceError:
        return
    finally:
        await trio.aclose_forcefully(stream)
        script.closed += 1
        script.closed_event.set()


@asynccontextmanager
async def scripted(
    *replies: Reply, server_ssl: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[Script, str]]:
    script = Script(list(replies))
    async with trio.open_nursery() as nursery:
        if server_ssl is None:
            serve = partial(trio.serve_tcp, partial(_serve, script), 0, host=host)
        else:
            serve = partial(
                trio.serve_ssl_over_tcp,
                partial(_serve, script),
                0,
                server_ssl,
                host="127.0.0.1",
                https_compatible=True,
            )
        listeners = await nursery.start(serve)
        sock = listeners[0].transport_listener.socket if server_ssl else listeners[0].socket
        port = sock.getsockname()[1]
        scheme = "https" if server_ssl else "http"
        where = f"[{host}]" if ":" in host else host
        yield script, f"{scheme}://{where}:{port}"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def pool_for(base_url: str, **kwargs: object) -> AsyncIterator[UpstreamPool]:
    settings = UpstreamSettings(
        name="wire", base_url=base_url, auth_header="x-key", credential=SECRET
    )
    pool = UpstreamPool(settings, **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()


def head_of(request: bytes) -> dict[str, str]:
    lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    return {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


async def test_keep_alive_reuses_one_connection_and_frames_requests() -> None:
    """Three calls share one connection; Host, default and caller headers, Content-Length."""
    with trio.fail_after(5):
        async with (
            scripted(Reply(ok()), Reply(ok()), Reply(ok())) as (script, base),
            pool_for(base) as pool,
        ):
            get = await pool.execute(
                HttpRequest("GET", "/a", query={"q": "1 2"}, headers={"Accept": "text/x"}),
                timeout=2.0,
            )
            post = await pool.execute(HttpRequest("POST", "/b", json={"n": 1}), timeout=2.0)
            empty = await pool.execute(HttpRequest("POST", "/c"), timeout=2.0)
            stats = pool.stats()
    assert (get.status, post.status, empty.status) == (200, 200, 200)
    assert get.json() == {"ok": True}
    assert script.connections == 1
    assert (stats["created"], stats["connects"]) == (1, 1)
    first, second, third = script.requests
    assert first.startswith(b"GET /a?q=1+2 HTTP/1.1\r\n")
    port = base.rsplit(":", 1)[1]
    headers = head_of(first)
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["accept"] == "text/x"  # the caller's value replaces the default
    assert headers["user-agent"] == "claykiln"
    assert headers["x-key"] == SECRET
    assert "content-length" not in headers
    assert head_of(second)["content-length"] == "7"
    assert head_of(second)["content-type"] == "application/json"
    assert second.endswith(b'{"n":1}')
    assert head_of(third)["content-length"] == "0"


async def test_connection_close_is_honoured_without_counting_an_error() -> None:
    """A response with Connection: close is read whole; the next call opens a new connection."""
    with trio.fail_after(5):
        replies = (Reply(ok(b"1", "Connection: close"), close=True), Reply(ok(b"2")))
        async with scripted(*replies) as (script, base), pool_for(base) as pool:
            one = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
            two = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
            stats = pool.stats()
    assert (one.body, two.body) == (b"1", b"2")
    assert script.connections == 2
    assert stats["closed_after_error"] == 0


async def test_server_closing_an_idle_connection_is_replaced_before_reuse() -> None:
    """The server drops the kept-alive connection while idle: the next call still succeeds, on a
    fresh connection, without ever writing to the dead one."""
    with trio.fail_after(5):
        replies = (Reply(ok(b"1"), close=True), Reply(ok(b"2")))
        async with scripted(*replies) as (script, base), pool_for(base) as pool:
            one = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
            await script.wait_closed(1)
            two = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
            stats = pool.stats()
    assert (one.body, two.body) == (b"1", b"2")
    assert script.connections == 2
    assert len(script.requests) == 2
    assert stats["closed_after_error"] == 0
    assert (stats["created"], stats["connects"]) == (1, 2)  # one connection object, reopened


async def test_bytes_past_the_response_end_are_never_read_as_the_next_answer() -> None:
    """An upstream that lies about Content-Length (sends more): the extra bytes are not taken for
    the next call's response; that connection is dropped."""
    lie = ok(b"ok")[:-2] + b"okHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforge"
    with trio.fail_after(5):
        async with (
            scripted(Reply(lie), Reply(ok(b"real"))) as (script, base),
            pool_for(base) as pool,
        ):
            one = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
            two = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert one.body == b"ok"
    assert two.body == b"real"
    assert script.connections == 2


async def test_informational_responses_are_skipped() -> None:
    """A 100 Continue / 103 Early Hints before the answer is not the answer."""
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok()
    with trio.fail_after(5):
        async with scripted(Reply(data)) as (_, base), pool_for(base) as pool:
            response = await pool.execute(HttpRequest("POST", "/", json={}), timeout=2.0)
    assert response.status == 200
    assert "link" not in response.headers


async def test_repeated_headers_are_joined_and_odd_bytes_decoded() -> None:
    data = ok(b"{}", "Set-Cookie: a=1", "Set-Cookie: b=2", "X-Name: caf\xc3\xa9".encode().decode())
    with trio.fail_after(5):
        async with scripted(Reply(data)) as (_, base), pool_for(base) as pool:
            response = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert response.headers["set-cookie"] == "a=1, b=2"
    assert decode_header("café".encode()) == "café"
    assert decode_header(b"\xff") == "\xff"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies_are_decoded(coding: str) -> None:
    payload = json.dumps({"rows": list(range(200))}).encode()
    if coding == "gzip":
        body = gzip.compress(payload)
    elif coding == "deflate":
        body = zlib.compress(payload)
    else:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = packer.compress(payload) + packer.flush()
    name = "gzip" if coding == "gzip" else "deflate"
    with trio.fail_after(5):
        async with (
            scripted(Reply(ok(body, f"Content-Encoding: {name}"))) as (script, base),
            pool_for(base) as pool,
        ):
            response = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert response.body == payload
    assert head_of(script.requests[0])["accept-encoding"] == "gzip, deflate"


async def test_unknown_coding_is_passed_through() -> None:
    with trio.fail_after(5):
        async with (
            scripted(Reply(ok(b"\x01\x02", "Content-Encoding: br"))) as (_, base),
            pool_for(base) as pool,
        ):
            response = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert response.body == b"\x01\x02"
    assert response.headers["content-encoding"] == "br"


async def test_gzip_bomb_is_too_large_and_corrupt_gzip_is_protocol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small compressed body that inflates past the limit is refused, not inflated."""
    monkeypatch.setattr("claykiln.actors.upstream.MAX_BODY_BYTES", 100_000)
    bomb = gzip.compress(b"\0" * 5_000_000)
    replies = (
        Reply(ok(bomb, "Content-Encoding: gzip")),
        Reply(ok(b"not gzip at all", "Content-Encoding: gzip")),
    )
    with trio.fail_after(5):
        async with scripted(*replies) as (_, base), pool_for(base) as pool:
            with pytest.raises(UpstreamRefusal) as bombed:
                await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
            with pytest.raises(UpstreamRefusal) as corrupt:
                await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert len(bomb) < 100_000
    assert bombed.value.details is not None
    assert bombed.value.details["kind"] == "too_large"
    assert corrupt.value.details is not None
    assert corrupt.value.details["kind"] == "protocol"


async def test_oversized_response_head_is_a_protocol_error() -> None:
    head = ok(b"", "X-Big: " + "a" * 200_000)  # h11 refuses an unfinished head over 64 KiB
    with trio.fail_after(5):
        async with scripted(Reply(head)) as (_, base), pool_for(base) as pool:
            with pytest.raises(UpstreamRefusal) as info:
                await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert info.value.details is not None
    assert info.value.details["kind"] == "protocol"


async def test_truncated_body_is_a_protocol_error() -> None:
    """Content-Length promises 100 bytes; the server sends 10 and closes."""
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
    with trio.fail_after(5):
        async with scripted(Reply(data, close=True)) as (_, base), pool_for(base) as pool:
            with pytest.raises(UpstreamRefusal) as info:
                await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert info.value.details is not None
    assert (info.value.details["kind"], info.value.details["sent"]) == ("protocol", True)


async def test_answer_before_the_body_is_read_reaches_the_caller() -> None:
    """A server that refuses a large upload with 413 before reading it (and closes): the caller
    gets the 413, not a write error."""
    refusal = Reply(ok(b'{"error":"too big"}', "Connection: close", status="413 Payload Too Large"))
    refusal.read_body = False
    refusal.close = True
    with trio.fail_after(10):
        async with scripted(refusal) as (_, base), pool_for(base) as pool:
            response = await pool.execute(
                HttpRequest("POST", "/", content=b"x" * 8_000_000), timeout=5.0
            )
    assert response.status == 413
    assert response.json() == {"error": "too big"}


async def test_bad_header_value_is_refused_before_any_byte_is_sent() -> None:
    with trio.fail_after(5):
        async with scripted(Reply(ok())) as (script, base), pool_for(base) as pool:
            with pytest.raises(BadRequestRefusal):
                await pool.execute(HttpRequest("GET", "/", headers={"x-a": "é"}), timeout=2.0)
            with pytest.raises(BadRequestRefusal):
                await pool.execute(HttpRequest("GET", "/", headers={"x a": "1"}), timeout=2.0)
            response = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert response.status == 200
    assert len(script.requests) == 1


async def test_head_and_204_answers_have_no_body_to_wait_for() -> None:
    """A HEAD answer declares a length it does not send, a 204 sends nothing: neither hangs, and
    the connection stays usable."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    empty = b"HTTP/1.1 204 No Content\r\n\r\n"
    with trio.fail_after(5):
        replies = (Reply(head), Reply(empty), Reply(ok()))
        async with scripted(*replies) as (script, base), pool_for(base) as pool:
            first = await pool.execute(HttpRequest("HEAD", "/"), timeout=2.0)
            second = await pool.execute(HttpRequest("DELETE", "/"), timeout=2.0)
            third = await pool.execute(HttpRequest("GET", "/"), timeout=2.0)
    assert (first.status, first.body, first.headers["content-length"]) == (200, b"", "1234")
    assert (second.status, second.body) == (204, b"")
    assert third.status == 200
    assert script.connections == 1


async def test_ipv6_upstream_gets_a_bracketed_host_header() -> None:
    with trio.fail_after(5):
        async with scripted(Reply(ok()), host="::1") as (script, base), pool_for(base) as pool:
            response = await pool.execute(HttpRequest("GET", "/v6"), timeout=2.0)
    assert response.status == 200
    assert head_of(script.requests[0])["host"] == f"[::1]:{base.rsplit(':', 1)[1]}"


async def test_an_upstream_dripping_bytes_is_cut_at_the_class_timeout() -> None:
    """A server that sends its answer one byte every 50 ms (a slow-loris upstream) cannot hold a
    call past its timeout: the budget covers the whole exchange, not each read."""
    dripping = Reply(ok(b"x" * 200), drip=0.05)
    with trio.fail_after(5):
        async with scripted(dripping) as (script, base), pool_for(base) as pool:
            with pytest.raises(TimeoutRefusal) as info:
                # 1 s: far short of the whole drip, yet long enough for the request to reach
                # the server and a first byte to come back on a loaded machine (0.3 s could run
                # out before the drip began, and then there was no drip to cut).
                await pool.execute(HttpRequest("GET", "/"), timeout=1.0)
            await script.wait_closed(1)  # our side closed the connection: the drip broke off
            stats = pool.stats()
    assert info.value.details is not None
    assert (info.value.details["stage"], info.value.details["sent"]) == ("request", True)
    assert 0 < script.dripped < len(dripping.data)  # the answer (10 s of drip) never finished
    assert stats["in_use"] == 0 and stats["idle"] == 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, host: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_exchange_with_a_trusted_certificate(ca: trustme.CA) -> None:
    """https upstreams speak TLS, verify the certificate and keep the connection alive."""
    with trio.fail_after(10):
        tls = server_context(ca, "127.0.0.1")
        async with (
            scripted(Reply(ok()), Reply(ok()), server_ssl=tls) as (script, base),
            pool_for(base, ssl_context=client_context(ca)) as pool,
        ):
            one = await pool.execute(HttpRequest("GET", "/"), timeout=5.0)
            two = await pool.execute(HttpRequest("GET", "/"), timeout=5.0)
    assert (one.status, two.status) == (200, 200)
    assert script.connections == 1


@pytest.mark.parametrize("case", ["wrong-host", "untrusted"])
async def test_tls_refuses_a_certificate_it_cannot_trust(ca: trustme.CA, case: str) -> None:
    """A certificate for another host, or from an unknown CA, fails to connect (sent=False)."""
    host = "evil.example" if case == "wrong-host" else "127.0.0.1"
    trusted = client_context(ca) if case == "wrong-host" else ssl.create_default_context()
    with trio.fail_after(10):
        async with (
            scripted(Reply(ok()), server_ssl=server_context(ca, host)) as (script, base),
            pool_for(base, ssl_context=trusted) as pool,
        ):
            with pytest.raises(UpstreamRefusal) as info:
                await pool.execute(HttpRequest("GET", "/"), timeout=5.0)
    assert info.value.details is not None
    assert (info.value.details["kind"], info.value.details["sent"]) == ("connect", False)
    assert script.requests == []
    assert SECRET not in str(info.value)
