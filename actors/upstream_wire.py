"""One HTTP/1.1 connection to an upstream: h11's state machine over a trio stream (TCP or TLS).

Card
- owns: one socket (plain, or TLS through ``trio.SSLStream``) and its ``h11.Connection``.
- used by: ``claykiln.actors.upstream.UpstreamPool`` only, one exchange at a time, in the
  caller's task; the pool's cancel scope bounds the whole exchange, so a caller's deadline or
  cancellation really stops the socket (the pool then closes the connection, never reuses it).
- replies: a ``WireResponse`` (status, headers as sent, the whole body decoded from gzip or
  deflate); raises httpx's transport exceptions (``ConnectError``, ``ConnectTimeout``,
  ``ReadError``, ``WriteError``, ``RemoteProtocolError``, ``LocalProtocolError``) so the pool
  keeps httpx's error vocabulary, or ``BodyTooLarge``.
- reuse: kept alive only when both sides finished the exchange cleanly (h11 DONE/DONE) and the
  server did not ask to close; before a reuse, a readable idle socket (the server closed it, or
  sent bytes nobody asked for) is dropped and a fresh connection is opened instead.

Why not httpx's own client here (docs/architecture.md, "The HTTP exchange"): the exchange is the
daemon's hot path. On the 2-core reference machine one sequential exchange to nginx cost 426 us
of CPU through ``AsyncClient.get``, 338 us through its transport, 258 us through an httpcore
connection and 132 us as h11 over trio. The daemon adds an RPC hop to every call, so only the
leaner exchange lets ``call`` through the daemon match a caller using httpx directly. httpx stays
the vocabulary (URLs, SSL context, exceptions) and the bench's baseline; h11 (httpx's own HTTP/1.1
parser, through httpcore) does the framing, so no HTTP parsing is hand-written.
"""

from __future__ import annotations

import select
import ssl
import zlib
from collections.abc import Sequence
from typing import Final

import attrs
import h11
import httpx
import trio

__all__ = [
    "MAX_HEAD_BYTES",
    "BodyBuffer",
    "BodyTooLarge",
    "Http11Connection",
    "Origin",
    "WireResponse",
    "decode_header",
]

READ_SIZE: Final = 65536
MAX_HEAD_BYTES: Final = 64 * 1024  # status line + headers of one response
GZIP: Final = (16 + zlib.MAX_WBITS,)
# Content coding -> zlib wbits to try in turn ("deflate" is zlib-wrapped, or raw in the wild).
DECODERS: Final = {"gzip": GZIP, "x-gzip": GZIP, "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}


class BodyTooLarge(Exception):
    """The response body (declared or counted, before or after decoding) exceeds the limit."""

    def __init__(self, size: str) -> None:
        super().__init__(size)
        self.size = size


class BodyBuffer:
    """A response body collected under ``max_body`` bytes; a declared Content-Length over the
    limit is refused before any byte is read."""

    def __init__(self, max_body: int, declared: bytes | str | None = None) -> None:
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise BodyTooLarge(declared if isinstance(declared, str) else declared.decode())
        self.max_body = max_body
        self.size = 0
        self._chunks: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_body:
            raise BodyTooLarge(f"more than {self.size}")
        self._chunks.append(chunk)

    def value(self) -> bytes:
        return b"".join(self._chunks)


@attrs.frozen
class Origin:
    """Where a connection goes: scheme, host, port and the Host header value."""

    scheme: str
    host: str
    port: int
    host_header: bytes

    @classmethod
    def from_url(cls, url: httpx.URL) -> Origin:
        port = url.port or (443 if url.scheme == "https" else 80)
        return cls(scheme=url.scheme, host=url.host, port=port, host_header=url.netloc)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@attrs.frozen
class WireResponse:
    """A whole response: ``headers`` as h11 gives them (lower-case name bytes, value bytes)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def decode_header(raw: bytes) -> str:
    """A header name or value as text: ASCII, else UTF-8, else Latin-1 (never fails)."""
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket


class Http11Connection:
    """One keep-alive HTTP/1.1 connection, opened on first use (see the module card)."""

    def __init__(self, origin: Origin, ssl_context: ssl.SSLContext | None = None) -> None:
        self.origin = origin
        self._ssl_context = ssl_context
        self._stream: trio.abc.Stream | None = None
        self._fd = -1
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.exchanges = 0
        self.connects = 0

    def __repr__(self) -> str:
        state = "open" if self._stream is not None else "closed"
        origin = self.origin
        return f"<Http11Connection {origin.scheme}://{origin.host}:{origin.port} {state}>"

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    @property
    def reusable(self) -> bool:
        """True when the last exchange ended cleanly and the server keeps the connection."""
        return self._stream is not None and self._h11.our_state is h11.IDLE

    def _stale(self) -> bool:
        """An idle socket that is readable was closed by the server (or holds junk)."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(0))

    async def aclose(self) -> None:
        """Close the socket at once (no TLS close_notify wait); safe to call twice."""
        stream, self._stream = self._stream, None
        self._fd = -1
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _connect(self, connect_timeout: float | None) -> None:
        origin = self.origin
        stream: trio.abc.Stream | None = None
        with trio.move_on_after(connect_timeout if connect_timeout is not None else float("inf")):
            try:
                tcp = await trio.open_tcp_stream(origin.host, origin.port)
                stream = tcp
                if origin.tls:
                    context = self._ssl_context or ssl.create_default_context()
                    tls = trio.SSLStream(
                        tcp, context, server_hostname=origin.host, https_compatible=True
                    )
                    stream = tls
                    await tls.do_handshake()
            except (OSError, trio.BrokenResourceError) as exc:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                raise httpx.ConnectError(_describe(exc)) from None
            except BaseException:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                raise
            self._stream = stream
            self._fd = _socket_of(stream).fileno()
            self.connects += 1
            return
        if stream is not None:
            await trio.aclose_forcefully(stream)
        msg = f"connecting to {origin.host}:{origin.port} took over {connect_timeout}s"
        raise httpx.ConnectTimeout(msg)

    async def exchange(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        *,
        connect_timeout: float | None,
        max_body: int,
    ) -> WireResponse:
        """Send one request and read the whole response (see the module card for errors).

        ``headers`` must hold Host and the body's Content-Length; the caller owns them.
        """
        if self._stream is not None and (not self.reusable or self._stale()):
            await self.aclose()
        if self._stream is None:
            await self._connect(connect_timeout)
        stream = self._stream
        assert stream is not None
        self.exchanges += 1
        conn = self._h11
        try:
            data = conn.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from None
        try:
            await stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A server may answer (413, 401) and close before reading the whole request: read
            # what it said, and report the write failure only when there is no answer.
            try:
                return await self._receive(stream, max_body)
            except (httpx.TransportError, BodyTooLarge):
                raise httpx.WriteError(_describe(exc)) from None
        return await self._receive(stream, max_body)

    async def _receive(self, stream: trio.abc.Stream, max_body: int) -> WireResponse:
        conn = self._h11
        response: h11.Response | None = None
        body = BodyBuffer(max_body)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from None
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise httpx.ReadError(_describe(exc)) from None
                if not data and response is None and conn.their_state is h11.SEND_RESPONSE:
                    msg = "server disconnected without sending a response"
                    raise httpx.RemoteProtocolError(msg)
                try:
                    conn.receive_data(bytes(data))
                except h11.RemoteProtocolError as exc:
                    raise httpx.RemoteProtocolError(str(exc)) from None
            elif type(event) is h11.Data:
                body.add(bytes(event.data))
            elif type(event) is h11.Response:
                response = event
                body = BodyBuffer(max_body, _header(event.headers, b"content-length"))
            elif type(event) is h11.EndOfMessage:
                break
            elif type(event) is h11.ConnectionClosed:
                msg = "server closed the connection before the response ended"
                raise httpx.RemoteProtocolError(msg)
            # h11.InformationalResponse (1xx): nothing to do, the final response follows.
        assert response is not None
        done = conn.our_state is h11.DONE and conn.their_state is h11.DONE
        if done and not conn.trailing_data[0]:
            conn.start_next_cycle()
        else:  # Connection: close, HTTP/1.0, or bytes past the response's end: never reuse
            await self.aclose()
        content = body.value()
        coding = _header(response.headers, b"content-encoding")
        if coding is not None and content:
            content = _decode_body(coding, content, max_body)
        return WireResponse(
            status=response.status_code, headers=list(response.headers), body=content
        )


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


def _decode_body(coding: bytes, body: bytes, max_body: int) -> bytes:
    """Undo gzip / deflate content codings (last applied first), bounded by ``max_body``
    decoded bytes; a coding we do not know leaves the body as sent (as httpx does)."""
    names = [part.strip().lower() for part in coding.decode("latin-1").split(",")]
    names = [name for name in names if name and name != "identity"]
    if not names or any(name not in DECODERS for name in names):
        return body
    for name in reversed(names):
        body = _inflate(body, name, max_body)
    return body


def _inflate(body: bytes, name: str, max_body: int) -> bytes:
    *fallbacks, last = DECODERS[name]
    for bits in (*fallbacks, last):
        inflater = zlib.decompressobj(bits)
        try:
            out = inflater.decompress(body, max_body + 1)
        except zlib.error as exc:
            if bits != last:
                continue
            msg = f"response body is not valid {name} data: {exc}"
            raise httpx.DecodingError(msg) from None
        if len(out) > max_body or inflater.unconsumed_tail:
            raise BodyTooLarge(f"more than {max_body} decoded")
        return out
    raise AssertionError("unreachable")  # pragma: no cover -- the loop returns or raises


def _describe(exc: BaseException) -> str:
    """A short description of a socket failure: trio's wrapper is replaced by its cause."""
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
