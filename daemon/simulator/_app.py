"""The simulator's ASGI app: read the request, apply the fault plan, ask the Simulator, answer.

Per non-control request, in order: read the body (keeping at most ``max_body_bytes`` + 1), then
if the fault plan covers the path: outage, hang (re-evaluated under the new plan once
released), latency, injected error (burst, then error_rate), reset before the handler; then
the Simulator's handler (which may store a row); then reset after the handler; then the reply.
A client that disconnects during a hang or a latency sleep releases the request at once
(counted in ``stats.abandoned``); server shutdown cancels it. The counters (in_flight,
responses, resets) are settled before the first byte of an answer (or the reset) goes out, so
a client that has its answer can assert on them at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from claykiln.daemon.simulator._abort import Receive, Send, abort_connection
from claykiln.daemon.simulator._control import handle_control
from claykiln.daemon.simulator._reply import WEBHOOK_PREFIX, Reply, json_reply, path_kind
from claykiln.daemon.simulator._simulator import Simulator

__all__ = ["SimulatorApp"]

# A control payload is a small JSON object; anything bigger is refused.
CONTROL_MAX_BODY = 64 * 1024

_UNAVAILABLE = json_reply(503, {"message": "Service Unavailable (simulated outage)"})
_NOT_FOUND = json_reply(404, {"message": "Not found"})
# The decision to drop the connection without an answer (compared by identity).
_RESET = Reply(0, b"")


class _ClientGone(Exception):
    """The client disconnected before the request was answered."""


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body (at most ``limit`` + 1 bytes kept) and whether it exceeded ``limit``.

    Drains the whole body either way, so hypercorn's per-request queue never stalls.
    Raises _ClientGone if the client disconnects first.
    """
    message = await receive()
    if message["type"] != "http.request":
        raise _ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body, len(body) > limit
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        if size <= limit:
            chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)[: limit + 1], size > limit


async def _unless_disconnected(receive: Receive, wait: Callable[[], Awaitable[None]]) -> None:
    """Run ``wait`` to completion, or raise _ClientGone as soon as the client disconnects."""
    gone = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await wait()
        nursery.cancel_scope.cancel()
    if gone:
        raise _ClientGone


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }


async def _send_reply(send: Send, reply: Reply) -> None:
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class SimulatorApp:
    """An ASGI 3 application serving one ``Simulator`` (control plane under ``/_sim/``)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (http or lifespan)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        sim = self.sim
        path: str = scope["path"]
        kind = path_kind(path)
        sim.stats.received[kind] += 1
        if kind == "control":
            await self._control(scope, receive, send)
            return
        sim.stats.in_flight += 1
        sim.notify()
        try:
            outcome = await self._decide(kind, path, scope, receive)
        except _ClientGone:
            sim.stats.abandoned[kind] += 1
            sim.stats.in_flight -= 1
            sim.notify()
            return
        except BaseException:
            sim.stats.in_flight -= 1
            sim.notify()
            raise
        sim.stats.in_flight -= 1
        if outcome is _RESET:
            sim.stats.resets[kind] += 1
            sim.notify()
            await abort_connection(receive, send)
        else:
            sim.stats.responses[kind, outcome.status] += 1
            sim.notify()
            await _send_reply(send, outcome)

    async def _control(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        try:
            body, too_large = await _read_body(receive, CONTROL_MAX_BODY)
        except _ClientGone:
            return
        if too_large:
            reply = json_reply(413, {"message": "control payload too large"})
        else:
            reply = handle_control(
                self.sim, scope["method"], scope["path"], scope["query_string"], body
            )
        await _send_reply(send, reply)

    def _handle(
        self, kind: str, path: str, scope: Mapping[str, Any], body: bytes, big: bool
    ) -> Reply:
        sim = self.sim
        if kind == "webhook":
            if scope["method"] != "POST":
                return json_reply(405, {"message": "Method not allowed"})
            webhook_id = path[len(WEBHOOK_PREFIX) :]
            if not webhook_id or "/" in webhook_id:
                return _NOT_FOUND
            return sim.handle_webhook(webhook_id, _headers(scope), body, big)
        if kind == "public":
            return sim.handle_public(scope["method"], path, _headers(scope), body)
        return _NOT_FOUND

    async def _decide(
        self, kind: str, path: str, scope: Mapping[str, Any], receive: Receive
    ) -> Reply:
        """The answer to a Clay request under the fault plan (``_RESET``: drop the connection).

        Raises _ClientGone if the client disconnects while the request waits.
        """
        sim = self.sim
        body, big = await _read_body(receive, sim.settings.max_body_bytes)
        while sim.faults_apply(path):
            faults = sim.faults
            if faults.outage == "unavailable":
                return _UNAVAILABLE
            if faults.outage == "reset":
                return _RESET
            if not faults.hang:
                break
            await self._hold(receive, path)
        if not sim.faults_apply(path):
            return self._handle(kind, path, scope, body, big)
        if sim.faults.latency > 0:
            await self._delay(receive, sim.faults.latency)
        status = sim.draw_error()
        if status is not None:
            return json_reply(status, {"message": f"Injected error {status} (simulator)"})
        if sim.draw_reset("before_store"):
            return _RESET
        reply = self._handle(kind, path, scope, body, big)
        if sim.draw_reset("after_store"):
            return _RESET
        return reply

    async def _hold(self, receive: Receive, path: str) -> None:
        sim = self.sim

        async def hang() -> None:
            while sim.faults.hang and sim.faults_apply(path):
                await sim.wait_plan_change()

        sim.stats.hanging += 1
        sim.notify()
        try:
            await _unless_disconnected(receive, hang)
        finally:
            sim.stats.hanging -= 1
            sim.notify()

    async def _delay(self, receive: Receive, seconds: float) -> None:
        sim = self.sim

        async def sleep() -> None:
            await trio.sleep(seconds)

        sim.stats.delayed += 1
        sim.notify()
        try:
            await _unless_disconnected(receive, sleep)
        finally:
            sim.stats.delayed -= 1
            sim.notify()
