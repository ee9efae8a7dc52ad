"""The httpx alternative to ``Http11Connection``: one single-connection ``httpx.AsyncClient``.

Card
- chosen per upstream with ``http_client = "httpx"`` (default ``"h11"``, the leaner
  ``Http11Connection`` of ``upstream_wire``); an escape hatch for an upstream the h11 connection
  mishandles, and the executor the daemon shipped with first (``call`` at 0.61-0.65 of direct
  httpx, docs/performance.md).
- same interface and promises as ``Http11Connection``: ``exchange`` sends one request and reads
  the whole response (gzip/deflate decoded by httpx, the body limit counted on decoded bytes),
  raising httpx's exceptions or ``BodyTooLarge``; ``aclose``; ``reusable``; ``connects``
  (here: 1 once the client was used; httpx reopens a closed keep-alive connection by itself).
- the header list the pool builds (Host, Content-Length, defaults, the caller's, auth) is sent
  as given: httpx only adds the defaults it finds missing.
"""

from __future__ import annotations

import ssl
from typing import Final

import httpx

from claykiln.actors.upstream_wire import BodyBuffer, Origin, WireResponse

__all__ = ["HttpxConnection"]

LIMITS: Final = httpx.Limits(max_connections=1, max_keepalive_connections=1)


class HttpxConnection:
    """One ``httpx.AsyncClient`` limited to one connection, made on first use."""

    def __init__(self, origin: Origin, ssl_context: ssl.SSLContext | None = None) -> None:
        self.origin = origin
        self._ssl_context = ssl_context
        self._client: httpx.AsyncClient | None = None
        self._prefix = f"{origin.scheme}://{origin.host_header.decode('ascii')}"
        self.exchanges = 0
        self.connects = 0

    def __repr__(self) -> str:
        state = "open" if self._client is not None else "closed"
        return f"<HttpxConnection {self._prefix} {state}>"

    @property
    def is_open(self) -> bool:
        return self._client is not None

    @property
    def reusable(self) -> bool:
        return self._client is not None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

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
        """Send one request and read the whole response (see the module card)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                limits=LIMITS,
                timeout=None,
                verify=self._ssl_context or True,
                trust_env=False,
            )
            self.connects += 1
        self.exchanges += 1
        async with self._client.stream(
            method.decode("ascii"),
            self._prefix + target.decode("ascii"),
            headers=headers,
            content=body,
            timeout=httpx.Timeout(None, connect=connect_timeout),
        ) as response:
            received = BodyBuffer(max_body, response.headers.get("content-length"))
            async for chunk in response.aiter_bytes():
                received.add(chunk)
            return WireResponse(
                status=response.status_code,
                headers=[(name.lower(), value) for name, value in response.headers.raw],
                body=received.value(),
            )
