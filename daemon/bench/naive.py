"""The naive client ``kiln bench outage`` compares the daemon with: retries, no breaker.

What many apps do (tenacity-style): each of ``concurrency`` workers calls the upstream in a loop;
a failed call (5xx or a connection error) is tried ``attempts`` times in all with a short
backoff (``backoff[i]`` before try i+2), then given up, and the worker starts the next call at
once. Nothing ever stops it from hammering a dead upstream.

HTTP/1.1 keep-alive GETs over plain trio TCP streams (one connection per worker, reopened after
an error), so the comparison needs no HTTP library here (only actors/ may import httpx) and
the client is at least as fast as a real one: the hammering is not understated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

import trio

__all__ = ["naive_retry_load"]

MAX_HEAD: Final = 64 * 1024
REQUEST_TIMEOUT: Final = 5.0
DRAIN_GRACE: Final = 5.0


class _BadResponse(Exception):
    """The server sent something this tiny client cannot read; the connection is dropped."""


async def _read_response(stream: trio.SocketStream, buffer: bytearray) -> int:
    """Read one response (status line, headers, Content-Length body); return its status."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > MAX_HEAD:
            raise _BadResponse("response head too large")
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise _BadResponse("connection closed")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    del buffer[: end + 4]
    try:
        status = int(head[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise _BadResponse(f"bad status line {head[0]!r}")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(buffer) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise _BadResponse("connection closed mid-body")
        buffer += chunk
    del buffer[:length]
    return status


async def naive_retry_load(
    host: str,
    port: int,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    concurrency: int = 64,
    seconds: float = 5.0,
    attempts: int = 3,
    backoff: tuple[float, ...] = (0.05, 0.1),
    max_requests: int = 1_000_000,
) -> dict[str, Any]:
    """Hammer ``GET http://host:port/path`` as described above for ``seconds`` (no new request
    after that, nor beyond ``max_requests`` sent in all). Returns ``calls`` (logical calls
    finished), ``succeeded``, ``gave_up``, ``requests`` (HTTP requests sent), ``statuses`` and
    ``errors`` (connection-level failures). Never raises for a failing upstream."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (head + "\r\n").encode("latin-1")
    statuses: Counter[int] = Counter()
    totals: Counter[str] = Counter()
    stop_at = trio.current_time() + seconds

    def more() -> bool:
        return trio.current_time() < stop_at and totals["requests"] < max_requests

    async def one_try(conn: list[trio.SocketStream], buffer: bytearray) -> bool:
        """One HTTP request; True for a 2xx-4xx answer (not worth retrying)."""
        totals["requests"] += 1
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                if not conn:
                    conn.append(await trio.open_tcp_stream(host, port))
                await conn[0].send_all(request)
                status = await _read_response(conn[0], buffer)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, _BadResponse, ValueError):
            totals["errors"] += 1
            if conn:
                await trio.aclose_forcefully(conn.pop())
            buffer.clear()
            return False
        statuses[status] += 1
        return status < 500

    async def worker() -> None:
        conn: list[trio.SocketStream] = []
        buffer = bytearray()
        try:
            while more():
                for attempt in range(attempts):
                    if await one_try(conn, buffer):
                        totals["succeeded"] += 1
                        break
                    if attempt + 1 == attempts or not more():
                        totals["gave_up"] += 1
                        break
                    await trio.sleep(backoff[min(attempt, len(backoff) - 1)] if backoff else 0)
                totals["calls"] += 1
        finally:
            if conn:
                await trio.aclose_forcefully(conn.pop())

    started = trio.current_time()
    with trio.move_on_at(stop_at + DRAIN_GRACE):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return {
        "concurrency": concurrency,
        "attempts": attempts,
        "backoff_s": list(backoff),
        "seconds": round(trio.current_time() - started, 3),
        "calls": totals["calls"],
        "succeeded": totals["succeeded"],
        "gave_up": totals["gave_up"],
        "requests": totals["requests"],
        "errors": totals["errors"],
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }
