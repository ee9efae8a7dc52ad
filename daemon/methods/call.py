"""The ``call`` method: validate the arguments at the edge, then hand the call to the pipeline.

``call`` has a precheck, run on the connection's reader before any task is spawned:
``parse_call`` validates every argument, then ``KeyedCalls.precheck`` answers at once what needs
no upstream (a replay of a completed idempotency key, a mismatch, a key in doubt, a required key
missing) and ``CallPipeline.fail_fast`` refuses what the published snapshots already refuse (an
unknown operation, an open breaker, a gate closed past the deadline, a full lane), or, for an
operation with ``on_failure = "fallback"``, answers it from the cache. What passes runs in its
own task through ``KeyedCalls.call`` (the key's record around ``CallPipeline.call``); the reply
is the result's wire map (docs/protocol.md, ``call``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import trio

from claykiln.actors.call import CallRequest
from claykiln.actors.errors import BadRequestRefusal
from claykiln.actors.idempotency_record import check_key
from claykiln.actors.keyed_call import PreparedCall
from claykiln.actors.upstream import NO_JSON
from claykiln.daemon.methods.args import check_names, str_map
from claykiln.daemon.rpc.types import Answered, Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["CALL_ARGS", "MAX_DEADLINE_MS", "methods", "parse_call"]

CALL_ARGS: Final = frozenset(
    {
        "operation",
        "path_params",
        "query",
        "json",
        "body",
        "headers",
        "lane",
        "deadline_ms",
        "idempotency_key",
    }
)
MAX_DEADLINE_MS: Final = 24 * 3600 * 1000


def parse_call(args: Mapping[str, Any], now: float) -> CallRequest:
    """Validate ``call`` arguments into a ``CallRequest`` (``deadline_ms`` -> absolute time)."""
    check_names("call", args, CALL_ARGS)
    operation = args.get("operation")
    if not isinstance(operation, str) or not operation:
        raise BadRequestRefusal(
            "call: operation must be a non-empty string naming a configured operation"
        )
    deadline_ms = args.get("deadline_ms")
    deadline = None
    if deadline_ms is not None:
        if (
            not isinstance(deadline_ms, int | float)
            or isinstance(deadline_ms, bool)
            or not 0 < deadline_ms <= MAX_DEADLINE_MS
        ):
            msg = f"call: deadline_ms must be a number of milliseconds in (0, {MAX_DEADLINE_MS}]"
            raise BadRequestRefusal(msg)
        deadline = now + deadline_ms / 1000
    body = args.get("body")
    if isinstance(body, str):
        body = body.encode()
    if body is not None and not isinstance(body, bytes):
        raise BadRequestRefusal("call: body must be bytes or a string")
    has_json = "json" in args
    if has_json and body is not None:
        raise BadRequestRefusal("call: give json or body, not both")
    lane = args.get("lane")
    if lane is not None and not isinstance(lane, str):
        raise BadRequestRefusal("call: lane must be a string naming a lane")
    key = args.get("idempotency_key")
    if key is not None:
        check_key(key)
    query = str_map("call", "query", args.get("query"), scalars=True)
    return CallRequest(
        operation=operation,
        path_params=str_map("call", "path_params", args.get("path_params"), scalars=True),
        query={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items()}
        or None,
        json=args["json"] if has_json else NO_JSON,
        body=body,
        headers=str_map("call", "headers", args.get("headers")),
        lane=lane,
        deadline=deadline,
        idempotency_key=key,
    )


def methods(runtime: Runtime) -> list[Method]:
    """``call``: precheck on the reader (``parse_call``, replays, fail-fast, fallbacks), then
    the keyed call around the pipeline."""
    calls = runtime.calls  # set once at start; a reload reconfigures it in place

    def call_precheck(ctx: RequestContext, args: dict[str, Any]) -> PreparedCall | Answered:
        prepared = calls.precheck(parse_call(args, trio.current_time()))
        return Answered(prepared) if isinstance(prepared, dict) else prepared

    async def call(ctx: RequestContext, prepared: PreparedCall) -> dict[str, Any]:
        return await calls.call(prepared)

    return [Method("call", handler=call, precheck=call_precheck)]
