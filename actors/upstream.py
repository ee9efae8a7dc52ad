"""Upstream executor: speaks HTTP/1.1 to one upstream, one connection per concurrent call.

Card
- owns: the keep-alive connections of one upstream (a LIFO free list, a FIFO
  ``trio.Semaphore`` of ``max_connections`` slots) and their lifecycle: ``Http11Connection``
  (``upstream_wire``: h11 over trio, TLS for https) by default, or ``HttpxConnection``
  (``upstream_httpx``: one single-connection ``httpx.AsyncClient``) with
  ``http_client = "httpx"``.
- receives: no inbox; ``execute`` runs in the CALLER's task, so a caller's timeout or
  cancellation really cancels the socket. Free list and counters change only between awaits.
- replies: ``HttpResponse`` for any HTTP status (the pipeline judges statuses), or raises a
  ``claykiln.actors.errors`` refusal (see Errors below); never an httpx exception.
- sends to: nobody (the pipeline reports outcomes to the breaker and gate).
- on cancellation: the connection of an interrupted call is closed and dropped, never reused;
  ``run`` closes the idle connections when it stops and later check-ins close theirs.
- on failure: same as cancellation; the slot is freed and the next call opens a fresh connection.
  A connection the server closed while idle is noticed before reuse and replaced.

Why one connection per call in flight, and why not httpx's pool (measured; the figures are in
docs/architecture.md, "HTTP client choice"): httpcore 1.0.9's shared pool collapses at 64 trio
tasks (206 vs 1,914 req/s) and leaks slots after a storm of cancelled requests
(encode/httpcore#1093); and the HTTP exchange is the daemon's hot path, where h11 over trio costs
about a third of ``AsyncClient``'s CPU. All connections share one SSL context (building one
costs ~21 ms).

Errors: every failure is raised as a ``claykiln.actors.errors`` refusal (``UpstreamTimeout``,
``UpstreamFailure``, ``BadRequestRefusal``); the mapping from httpx's exceptions, with
``retryable`` and ``sent``, is drawn in ``claykiln.actors.upstream_errors``. Credentials never
reach a log line, a repr or an exception message.

The value types and URL guards (``TimeoutClasses``, ``UpstreamSettings``, ``HttpRequest``,
``HttpResponse``, ``NO_JSON``, ``render_path``, ``join_url``, ``MAX_BODY_BYTES``) live in
``claykiln.actors.upstream_http`` and are re-exported here; with ``upstream_wire`` and
``upstream_errors`` they are the only call-path modules that import httpx (and the only
importers of h11).
"""

from __future__ import annotations

import collections
import json as jsonlib
import ssl
from typing import Any, Final

import attrs
import httpx
import trio

from claykiln.actors.errors import BadRequestRefusal, InternalRefusal, ShuttingDownRefusal
from claykiln.actors.log import get_logger
from claykiln.actors.upstream_errors import UpstreamErrors, UpstreamFailure, UpstreamTimeout
from claykiln.actors.upstream_http import (
    DELAY_SECONDS,
    HTTP_CLIENTS,
    MAX_BODY_BYTES,
    NO_JSON,
    PLACEHOLDER,
    HttpRequest,
    HttpResponse,
    TimeoutClasses,
    UpstreamSettings,
    join_url,
    render_path,
)
from claykiln.actors.upstream_httpx import HttpxConnection
from claykiln.actors.upstream_wire import (
    BodyTooLarge,
    Http11Connection,
    Origin,
    decode_header,
)

__all__ = [
    "DELAY_SECONDS",
    "HTTP_CLIENTS",
    "MAX_BODY_BYTES",
    "NO_JSON",
    "PLACEHOLDER",
    "HttpRequest",
    "HttpResponse",
    "TimeoutClasses",
    "UpstreamFailure",
    "UpstreamPool",
    "UpstreamSettings",
    "UpstreamTimeout",
    "join_url",
    "render_path",
]

log = get_logger("claykiln.upstream")

Connection = Http11Connection | HttpxConnection  # UpstreamSettings.http_client picks one

CLOSE_GRACE: Final = 1.0  # seconds a suspect client gets to close (shielded)
SHUTDOWN_GRACE: Final = 5.0  # seconds all idle clients get to close when the pool stops
IDLE_SWEEP_INTERVAL: Final = 30.0
IDLE_CLOSE_AFTER: Final = 60.0  # an idle client unused this long is closed by the sweep
USER_AGENT: Final = "claykiln"
ACCEPT_ENCODING: Final = b"gzip, deflate"
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})  # sent with Content-Length: 0 if empty


@attrs.define
class _PoolState:
    """Only the pool touches this; changes happen between awaits."""

    free: collections.deque[tuple[Connection, float]] = attrs.field(factory=collections.deque)
    phase: str = "new"  # new | running | stopped
    in_use: int = 0
    created: int = 0
    closed_after_error: int = 0
    closed_idle: int = 0
    requests: int = 0
    connects: int = 0
    # What the health monitor's reachability check reads (cumulative): exchanges that got an
    # HTTP answer (any status), that failed to connect, and that ran out of their class timeout
    # (a caller's own deadline or a wait for a free connection says nothing of the upstream).
    answers: int = 0
    connect_failures: int = 0
    timeouts: int = 0


class UpstreamPool:
    """Single-connection clients for one upstream, checked out per call (see the module card)."""

    def __init__(
        self, settings: UpstreamSettings, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        origin = httpx.URL(settings.base_url).netloc.decode("ascii")
        self._errors = UpstreamErrors(settings.name, settings.credential, origin=origin)
        self._state = _PoolState()
        self._slots = trio.Semaphore(settings.max_connections)
        self._origin = Origin.from_url(httpx.URL(settings.base_url))
        # One SSL context for every connection (building one costs ~21 ms).
        self._ssl = ssl_context or httpx.create_ssl_context(trust_env=False)
        base = {
            "accept": (b"Accept", b"*/*"),
            "accept-encoding": (b"Accept-Encoding", ACCEPT_ENCODING),
            "user-agent": (b"User-Agent", USER_AGENT.encode("ascii")),
        }
        for name, value in settings.default_headers.items():
            base[name.lower()] = (name.encode("ascii"), value.encode("ascii"))
        self._base_headers = base
        self._auth: tuple[str, tuple[bytes, bytes]] | None = None  # (lower-case key, header)
        if settings.auth_header is not None and settings.credential is not None:
            header = (settings.auth_header.encode("ascii"), settings.credential.encode("ascii"))
            self._auth = (settings.auth_header.lower(), header)

    def __repr__(self) -> str:
        return f"<UpstreamPool {self.settings.name} {self.settings.base_url}>"

    def stats(self) -> dict[str, Any]:
        """Counters for the ``status`` RPC (plain msgpack-able values)."""
        s = self._state
        return {
            "upstream": self.settings.name,
            "phase": s.phase,
            "in_use": s.in_use,
            "idle": len(s.free),
            "created": s.created,
            "closed_after_error": s.closed_after_error,
            "closed_idle": s.closed_idle,
            "requests": s.requests,
            "connects": s.connects,
            "max_connections": self.settings.max_connections,
            "answers": s.answers,
            "connect_failures": s.connect_failures,
            "timeouts": s.timeouts,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: sweep long-idle clients; on exit refuse new calls and close
        the idle clients (shielded, within SHUTDOWN_GRACE)."""
        self._state.phase = "running"
        task_status.started()
        try:
            while True:
                await trio.sleep(IDLE_SWEEP_INTERVAL)
                await self._close_idle(trio.current_time() - IDLE_CLOSE_AFTER)
        finally:
            self._state.phase = "stopped"
            free, self._state.free = self._state.free, collections.deque()
            with trio.move_on_after(SHUTDOWN_GRACE, shield=True):
                for client, _ in free:
                    await client.aclose()
            log.info("upstream.pool_stopped", upstream=self.settings.name, closed=len(free))

    async def _close_idle(self, older_than: float) -> None:
        free = self._state.free
        while free and free[0][1] < older_than:
            client, _ = free.popleft()
            self._state.closed_idle += 1
            with trio.move_on_after(CLOSE_GRACE, shield=True):
                await client.aclose()

    # The timeout is a budget reported in TimeoutRefusal.details (and told apart from the caller's
    # deadline), not just a cancel scope a caller could wrap around us.
    async def execute(
        self,
        request: HttpRequest,
        *,
        timeout: float,  # noqa: ASYNC109
        stage_deadline: float | None = None,
    ) -> HttpResponse:
        """Send ``request`` and read the whole body, within ``min(now + timeout,
        stage_deadline)`` (trio time); waiting for a free client counts against it.

        Raises TimeoutRefusal, UpstreamRefusal, BadRequestRefusal (a path leaving the base URL) or
        ShuttingDownRefusal (pool not running). Cancellation propagates after the call's client is
        closed.
        """
        state = self._state
        if state.phase != "running":
            if state.phase == "new":
                msg = f"upstream pool {self.settings.name} used before run() started"
                raise InternalRefusal(msg)
            msg = f"upstream {self.settings.name} is shutting down"
            raise ShuttingDownRefusal(msg)
        state.requests += 1
        start = trio.current_time()
        limit = start + timeout
        end = limit if stage_deadline is None else min(limit, stage_deadline)
        url = join_url(self.settings.base_url, request.path)
        payload = self._payload(request)
        if start >= end:
            raise self._errors.timeout(end, limit, timeout, sent=False)
        client = await self._checkout(end, limit, timeout)
        response: HttpResponse | None = None
        try:
            with trio.move_on_at(end):
                try:
                    response = await self._send(client, request, url, payload, end, start)
                except httpx.HTTPError as exc:
                    error = self._errors.translate(exc, timeout)
                    self._count_failure(error.details or {})
                    raise error from None
        finally:
            await self._checkin(client, healthy=response is not None)
        if response is None:
            error = self._errors.timeout(end, limit, timeout, sent=True)
            self._count_failure(error.details or {})
            raise error
        state.answers += 1
        return response

    def _count_failure(self, details: dict[str, Any]) -> None:
        """Count a connect failure or a class timeout for the health monitor."""
        if details.get("kind") == "connect" or details.get("stage") == "connect":
            self._state.connect_failures += 1
        elif details.get("stage") == "request":
            self._state.timeouts += 1

    async def _checkout(self, end: float, limit: float, budget: float) -> Connection:
        try:
            self._slots.acquire_nowait()  # no scheduler pass when a slot is free
        except trio.WouldBlock:
            # FIFO: trio.Semaphore hands a released slot to the longest waiter.
            with trio.move_on_at(end):
                await self._slots.acquire()
                if trio.current_time() < end:
                    return self._take_client()
                # Handed a slot as the time ran out: give it on rather than open a doomed call.
                self._slots.release()
            raise self._errors.timeout(end, limit, budget, sent=False, phase="pool")
        return self._take_client()

    def _take_client(self) -> Connection:
        state = self._state
        state.in_use += 1
        if state.free:
            return state.free.pop()[0]
        state.created += 1
        if self.settings.http_client == "httpx":
            return HttpxConnection(self._origin, self._ssl)
        return Http11Connection(self._origin, self._ssl)

    async def _checkin(self, client: Connection, *, healthy: bool) -> None:
        state = self._state
        try:
            if healthy and state.phase == "running" and client.reusable:
                state.free.append((client, trio.current_time()))
                return
            if not healthy:
                state.closed_after_error += 1
            with trio.move_on_after(CLOSE_GRACE, shield=True):
                await client.aclose()
        finally:
            state.in_use -= 1
            self._slots.release()

    async def _send(
        self,
        conn: Connection,
        request: HttpRequest,
        url: httpx.URL,
        payload: tuple[list[tuple[bytes, bytes]], bytes | None],
        end: float,
        start: float,
    ) -> HttpResponse:
        headers, content = payload
        if request.query:
            url = url.copy_merge_params(request.query)
        # Our cancel scope bounds the whole call; the connect is timed on its own only when its
        # class is shorter than what is left (so a timeout is never reported as two stages).
        remaining = end - trio.current_time()
        connect = self.settings.timeouts.connect
        opened = conn.connects
        try:
            wire = await conn.exchange(
                request.method.encode("ascii"),
                url.raw_path,
                headers,
                content,
                connect_timeout=connect if connect < remaining else None,
                max_body=MAX_BODY_BYTES,
            )
        except BodyTooLarge as exc:
            raise self._errors.too_large(exc.size) from None
        finally:
            self._state.connects += conn.connects - opened
        names: dict[str, str] = {}
        for key, value in wire.headers:
            name = key.decode("latin-1")
            text = decode_header(value)
            names[name] = f"{names[name]}, {text}" if name in names else text
        return HttpResponse(
            status=wire.status,
            headers=names,
            body=wire.body,
            duration=trio.current_time() - start,
        )

    def _payload(self, request: HttpRequest) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Header lines (defaults, then the request's, then framing and the credential last, so
        a caller can forge neither) and body bytes."""
        merged = dict(self._base_headers)
        try:
            for name, value in request.headers.items():
                merged[name.lower()] = (name.encode("ascii"), value.encode("ascii"))
            content = request.content
            if request.json is not NO_JSON:
                content = jsonlib.dumps(request.json, separators=(",", ":")).encode()
                merged.setdefault("content-type", (b"Content-Type", b"application/json"))
        except (TypeError, ValueError, AttributeError) as exc:  # UnicodeEncodeError: ValueError
            msg = f"request to {self.settings.name} cannot be encoded: {type(exc).__name__}"
            raise BadRequestRefusal(msg) from None
        merged["host"] = (b"Host", self._origin.host_header)
        merged.pop("transfer-encoding", None)
        if content is not None:
            merged["content-length"] = (b"Content-Length", str(len(content)).encode("ascii"))
        elif request.method.upper() in BODY_METHODS:
            merged["content-length"] = (b"Content-Length", b"0")
        else:
            merged.pop("content-length", None)
        if self._auth is not None:
            key, header = self._auth
            merged[key] = header
        return list(merged.values()), content
