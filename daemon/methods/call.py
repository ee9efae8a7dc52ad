"""The ``call`` method: validate the arguments at the edge, then hand the call to the pipeline.

``call`` has a precheck, run on the connection's reader before any task is spawned:
``parse_call`` validates every argument, then ``KeyedCalls.precheck`` answers at once what needs
no upstream (a replay of a completed idempotency key, a mismatch, a key in doubt, a required key
missing) and ``CallPipeline.fail_fast`` refuses what the published snapshots already refuse (an
unknown operation, an open breaker, a gate closed past the deadline, a full lane), or, for an
operation with ``on_failure = "fallback"``, answers it from the cache. What passes runs in its
own task through ``KeyedCalls.call`` (the key's record around ``CallPipeline.call``); the reply
is the result's wire map (docs/protocol.md, ``call``).

An operation with ``on_failure = "dlq"`` keeps a call that still fails after its retries
(``DLQ_CODES``: the upstream's failure, a timeout, or a fast refusal of an unavailable upstream)
as a dead job in the outbox's dead-letter queue (reason ``call_failed``, the request and the
error kept), written before the error reply, which carries its ``job_id`` in ``details``.
A row a call pushed to a webhook source counts against the source's lifetime cap like a job's
(``Outbox.note_call``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import trio

from claykiln.actors.call import CallRequest, Operation, check_json
from claykiln.actors.errors import BadRequestRefusal, Refusal
from claykiln.actors.idempotency_record import check_key
from claykiln.actors.keyed_call import PackedAnswer, PreparedCall
from claykiln.actors.upstream import NO_JSON
from claykiln.daemon.logs import get_logger
from claykiln.daemon.methods.args import check_names, str_map
from claykiln.daemon.methods.call_figures import counted
from claykiln.daemon.rpc.types import Answered, Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = [
    "CALL_ARGS",
    "DLQ_CODES",
    "MAX_DEADLINE_MS",
    "buries",
    "credential_missing",
    "methods",
    "parse_call",
]

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
DLQ_CODES: Final = frozenset(
    {"upstream_error", "timeout", "breaker_open", "rate_limited", "lane_full"}
)
"""Failures of a call that ``on_failure = "dlq"`` keeps as a dead job (reason ``call_failed``)."""

log = get_logger("claykiln.pipeline")


def parse_call(
    args: Mapping[str, Any], now: float, *, allowed: frozenset[str] = CALL_ARGS
) -> CallRequest:
    """Validate ``call`` arguments into a ``CallRequest`` (``deadline_ms`` -> absolute time);
    ``allowed``: the argument names accepted (a superset of ``CALL_ARGS``: the caller checks
    the others)."""
    if not allowed.issuperset(args):
        check_names("call", args, allowed)  # raises, naming the unknown ones
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
    if has_json:
        check_json(args["json"])  # NaN or Infinity would go upstream as invalid JSON
    lane = args.get("lane")
    if lane is not None and not isinstance(lane, str):
        raise BadRequestRefusal("call: lane must be a string naming a lane")
    key = args.get("idempotency_key")
    if key is not None:
        check_key(key)
    query = args.get("query")
    if query is not None:
        query = str_map("call", "query", query, scalars=True)
        query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items()}
    params, headers = args.get("path_params"), args.get("headers")
    return CallRequest(
        operation=operation,
        path_params={} if params is None else str_map("call", "path_params", params, scalars=True),
        query=query or None,
        json=args["json"] if has_json else NO_JSON,
        body=body,
        headers={} if headers is None else str_map("call", "headers", headers),
        lane=lane,
        deadline=deadline,
        idempotency_key=key,
    )


@attrs.frozen
class _Bury:
    """A call of an ``on_failure = "dlq"`` operation refused at once: kept as a dead job (a
    durable write, so in the request's task), then refused."""

    request: CallRequest
    error: Refusal


def buries(operation: Operation, error: Refusal) -> bool:
    """Whether ``error`` ending a call of ``operation`` is kept as a dead job: the operation has
    ``on_failure = "dlq"`` and the failure is the upstream's or its availability's
    (``DLQ_CODES``), not the request's."""
    return operation.on_failure == "dlq" and error.code in DLQ_CODES


def credential_missing(runtime: Runtime, operation: str) -> dict[str, str] | None:
    """``{credential, header, path}`` when ``operation`` has an auth whose credential file was
    missing at the last start or reload (nothing was sent in its header), else None."""
    config = runtime.config
    op = config.operations.get(operation)
    auth = config.auth_for(op) if op is not None else None
    if auth is None or runtime.credentials.get(auth.credential) is not None:
        return None
    path = runtime.credentials.directory / auth.credential
    return {"credential": auth.credential, "header": auth.header, "path": str(path)}


def methods(runtime: Runtime) -> list[Method]:
    """``call``: precheck on the reader (``parse_call``, replays, fail-fast, fallbacks), then
    the keyed call around the pipeline; with ``on_failure = "dlq"`` a failure is kept as a
    dead job whose ``job_id`` the error's details carry."""
    calls = runtime.calls  # set once at start; a reload reconfigures it in place

    def call_precheck(ctx: RequestContext, args: dict[str, Any]) -> PreparedCall | Answered | _Bury:
        request = parse_call(args, trio.current_time())
        try:
            prepared = calls.precheck(request)
        except Refusal as exc:
            op = runtime.pipeline.operations.get(request.operation)
            if op is not None and buries(op, exc):
                return _Bury(request, exc)
            raise
        if isinstance(prepared, PackedAnswer):
            return Answered(prepared, packed=prepared.body)
        return Answered(prepared) if isinstance(prepared, dict) else prepared

    async def bury(request: CallRequest, error: Refusal, started: float) -> Refusal:
        """``error`` with ``details.job_id`` of the dead job keeping ``request`` (unchanged
        when it could not be kept: the caller's error is never masked)."""
        details = dict(error.details or {})
        try:
            job_id = await runtime.outbox.bury(
                request,
                error,
                attempts=int(details.get("attempts", 1)),
                duration_ms=(trio.current_time() - started) * 1000,
            )
        except Refusal as exc:
            log.warning("call.dlq_failed", operation=request.operation, error=exc.message)
            return error
        details["job_id"] = job_id
        error.details = details
        return error

    async def call(ctx: RequestContext, prepared: PreparedCall | _Bury) -> dict[str, Any]:
        started = trio.current_time()
        if isinstance(prepared, _Bury):
            raise await bury(prepared.request, prepared.error, started)
        try:
            answer = await calls.call(prepared)
        except Refusal as exc:
            if buries(prepared.operation, exc):
                raise await bury(prepared.request, exc, started) from None
            raise
        runtime.outbox.note_call(prepared.operation, prepared.request, answer)
        if answer.get("status") in (401, 403):
            missing = credential_missing(runtime, prepared.request.operation)
            if missing is not None:
                answer["credential_missing"] = missing
        return answer

    precheck, handler = counted(runtime, call_precheck, call)  # kiln top, metrics
    return [Method("call", handler=handler, precheck=precheck)]
