"""The outbox methods: ``submit``, ``submit_many``, ``jobs.get`` and ``jobs.list`` (everyone).

``submit`` takes ``call``'s arguments plus ``not_before`` (unix seconds). Its precheck, on the
connection's reader, validates every argument (``parse_submit``) and ``Outbox.prepare`` refuses
what can never succeed and answers a key that already has a job; what passes is queued with the
storage writer there and then (``Outbox.submit_later``) and answered from the writer's commit,
once it is on disk, with no task per submit (a ``Later``; in a task only when the writer's inbox
is full): ``{job_id, state, existing, idempotency_key, due_at}`` (docs/protocol.md, ``submit``).
``submit_many {items: [submit's arguments, ...]}`` writes up to ``MAX_BATCH`` jobs in one
transaction and answers per item, an error item as ``{error: {code, message, ...}}``.
``jobs.get {job_id}`` answers the job (nil when unknown); ``jobs.list {state, after?, limit?}``
pages through the jobs in one state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import trio

from claykiln.actors.call import CallRequest
from claykiln.actors.errors import BadRequestRefusal, Refusal
from claykiln.actors.jobs import (
    DEAD_TABLE,
    DONE_TABLE,
    DUE_TABLE,
    INFLIGHT_TABLE,
    RETRY_TABLE,
    batch_ids,
)
from claykiln.actors.outbox import PreparedJob
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.methods.call import CALL_ARGS, parse_call
from claykiln.daemon.rpc.types import Answered, Later, Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["MAX_BATCH", "SUBMIT_ARGS", "methods", "page_limit", "parse_submit"]

SUBMIT_ARGS: Final = CALL_ARGS | {"not_before"}
MAX_BATCH: Final = 1000
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
STATE_TABLES: Final = {
    "pending": DUE_TABLE,
    "retry_wait": RETRY_TABLE,
    "in_flight": INFLIGHT_TABLE,
    "dead": DEAD_TABLE,
    "done": DONE_TABLE,
}
JOB_ARGS: Final = frozenset({"job_id"})
LIST_ARGS: Final = frozenset({"state", "after", "limit"})

Prepared = PreparedJob | dict[str, Any] | Refusal


def parse_submit(
    method: str, args: Mapping[str, Any], now: float
) -> tuple[CallRequest, float | None, float | None]:
    """Validate ``submit`` arguments: the ``CallRequest``, ``not_before`` (unix seconds or
    None) and ``deadline_ms`` (each attempt's budget, or None). Raises ``BadRequestRefusal``."""
    try:
        request = parse_call(args, now, allowed=SUBMIT_ARGS)
    except BadRequestRefusal as exc:
        message = exc.message.removeprefix("call: ")
        raise BadRequestRefusal(f"{method}: {message}", details=exc.details) from None
    not_before = args.get("not_before")
    if not_before is not None and (
        not isinstance(not_before, int | float) or isinstance(not_before, bool) or not_before < 0
    ):
        msg = f"{method}: not_before must be a time in unix seconds (a number), e.g. 1767225600"
        raise BadRequestRefusal(msg)
    deadline_ms = args.get("deadline_ms")
    return request, not_before, float(deadline_ms) if deadline_ms is not None else None


def page_limit(method: str, args: Mapping[str, Any], default: int = DEFAULT_PAGE) -> int:
    """``limit`` of a paged method: an integer in 1..MAX_PAGE (``default`` when absent)."""
    limit = args.get("limit", default)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_PAGE:
        msg = f"{method}: limit must be an integer in 1..{MAX_PAGE}"
        raise BadRequestRefusal(msg)
    return limit


def job_id_arg(method: str, args: Mapping[str, Any]) -> str:
    """The ``job_id`` argument (a non-empty string of printable ASCII)."""
    check_names(method, args, JOB_ARGS)
    job_id = args.get("job_id")
    if not isinstance(job_id, str) or not job_id or not job_id.isascii():
        msg = f"{method}: job_id must be the id a submit answered, e.g. '019a2b3c...'"
        raise BadRequestRefusal(msg)
    return job_id


def methods(runtime: Runtime) -> list[Method]:
    """``submit`` and ``submit_many`` (precheck on the reader, the write in a task);
    ``jobs.get`` and ``jobs.list`` inline."""
    outbox, jobs = runtime.outbox, runtime.jobs

    def prepare(method: str, args: Mapping[str, Any]) -> Prepared:
        request, not_before, deadline_ms = parse_submit(method, args, trio.current_time())
        return outbox.prepare(request, not_before=not_before, deadline_ms=deadline_ms)

    def submit_precheck(ctx: RequestContext, args: dict[str, Any]) -> Prepared | Answered | Later:
        prepared = prepare("submit", args)
        if isinstance(prepared, dict):
            return Answered(prepared)
        later = Later()
        if isinstance(prepared, PreparedJob) and outbox.submit_later(prepared, later):
            return later
        return prepared  # the writer's inbox is full: a task waits for room

    async def submit(ctx: RequestContext, prepared: PreparedJob) -> dict[str, Any]:
        return await outbox.submit(prepared)

    def submit_many_precheck(ctx: RequestContext, args: dict[str, Any]) -> list[Prepared]:
        check_names("submit_many", args, frozenset({"items"}))
        items = args.get("items")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH:
            msg = f"submit_many: items must be a list of 1..{MAX_BATCH} maps of submit arguments"
            raise BadRequestRefusal(msg)
        out: list[Prepared] = []
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                out.append(BadRequestRefusal(f"submit_many: items[{n}] must be a map"))
                continue
            try:
                out.append(prepare(f"submit_many: items[{n}]", item))
            except Refusal as exc:
                out.append(exc)
        return out

    async def submit_many(ctx: RequestContext, items: list[Prepared]) -> list[dict[str, Any]]:
        answers = await outbox.submit_many(items)
        return [{"error": a.to_wire()} if isinstance(a, Refusal) else a for a in answers]

    def jobs_get(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any] | None:
        job = jobs.get(job_id_arg("jobs.get", args))
        return None if job is None else job.to_wire(jobs.now())

    def jobs_list(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("jobs.list", args, LIST_ARGS)
        state = args.get("state")
        if state not in STATE_TABLES:
            msg = f"jobs.list: state must be one of {', '.join(STATE_TABLES)}, got {state!r}"
            raise BadRequestRefusal(msg)
        limit = page_limit("jobs.list", args)
        table = STATE_TABLES[state]
        start = _cursor_start("jobs.list", args.get("after"))
        keys = jobs.index_page(table, start, limit)
        now = jobs.now()
        items = []
        for job_id in batch_ids([(k, None) for k in keys], table):
            job = jobs.get(job_id)
            if job is not None:
                items.append(job.summary(now))
        more = len(keys) >= limit
        return {"items": items, "next": keys[-1].hex() if more and keys else None}

    return [
        Method("submit", handler=submit, precheck=submit_precheck),
        Method("submit_many", handler=submit_many, precheck=submit_many_precheck),
        Method("jobs.get", inline=jobs_get),
        Method("jobs.list", inline=jobs_list),
    ]


def _cursor_start(method: str, after: object) -> bytes | None:
    """The index key after the cursor ``after`` (a previous page's ``next``)."""
    if after is None:
        return None
    try:
        if not isinstance(after, str):
            raise ValueError(after)
        return bytes.fromhex(after) + b"\x00"
    except ValueError:
        msg = f"{method}: after must be the cursor a previous page answered (next)"
        raise BadRequestRefusal(msg) from None
