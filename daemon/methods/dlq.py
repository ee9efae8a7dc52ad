"""The dead-letter queue methods (docs/protocol.md, "The dead-letter queue").

Everyone: ``dlq.list`` (summaries, oldest first) and ``dlq.export`` (whole records, for JSON
lines), both ``{operation?, reason?, older_than?, newer_than?, after?, limit?}`` and answered
``{items, next}`` inline; ``dlq.get {job_id}`` (the dead job, nil when there is none).
Admins: ``dlq.retry`` (``job_id``, or filters, or ``all: true``; ``rate``), ``dlq.kill``
(``job_id``, or ``operation`` and/or ``queue``: waiting jobs to dead), ``dlq.purge`` (filters
or ``all: true``; deletes only with ``confirm: true``, else answers how many match). The
changes run in a task and answer once they are on disk. A bulk retry or purge needs a filter
or ``all: true``, so an empty request never changes the whole queue by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from claykiln.actors.dlq import DeadFilter
from claykiln.actors.errors import BadRequestRefusal
from claykiln.actors.jobs import JobState
from claykiln.actors.jobs_policy import REASONS
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.methods.jobs import job_id_arg, page_limit
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["methods", "parse_filter"]

FILTER_ARGS: Final = frozenset({"operation", "reason", "older_than", "newer_than"})
PAGE_ARGS: Final = FILTER_ARGS | {"after", "limit"}
RETRY_ARGS: Final = FILTER_ARGS | {"job_id", "all", "rate"}
KILL_ARGS: Final = frozenset({"job_id", "operation", "queue"})
PURGE_ARGS: Final = FILTER_ARGS | {"all", "confirm"}


def _text(method: str, args: Mapping[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        msg = f"{method}: {name} must be a non-empty string"
        raise BadRequestRefusal(msg)
    return value


def _seconds(method: str, args: Mapping[str, Any], name: str) -> float | None:
    value = args.get(name)
    if value is not None and (
        not isinstance(value, int | float) or isinstance(value, bool) or value < 0
    ):
        msg = f"{method}: {name} must be a number of seconds >= 0"
        raise BadRequestRefusal(msg)
    return None if value is None else float(value)


def parse_filter(method: str, args: Mapping[str, Any]) -> DeadFilter:
    """The dead-job filter in ``args``: ``operation``, ``reason`` (one of ``REASONS``),
    ``older_than`` / ``newer_than`` (seconds since the job died)."""
    reason = _text(method, args, "reason")
    if reason is not None and reason not in REASONS:
        msg = f"{method}: reason must be one of {', '.join(REASONS)}, got {reason!r}"
        raise BadRequestRefusal(msg)
    return DeadFilter(
        operation=_text(method, args, "operation"),
        reason=reason,
        older_than=_seconds(method, args, "older_than"),
        newer_than=_seconds(method, args, "newer_than"),
    )


def _flag(method: str, args: Mapping[str, Any], name: str) -> bool:
    value = args.get(name, False)
    if not isinstance(value, bool):
        msg = f"{method}: {name} must be true or false"
        raise BadRequestRefusal(msg)
    return value


def _bulk_filter(method: str, args: Mapping[str, Any]) -> DeadFilter:
    """The filter of a bulk change, which needs a filter or ``all: true``."""
    filters = parse_filter(method, args)
    every = _flag(method, args, "all")
    if filters == DeadFilter() and not every:
        msg = (
            f"{method}: give job_id, a filter (operation, reason, older_than, newer_than) "
            "or all: true"
        )
        raise BadRequestRefusal(msg)
    return filters


def methods(runtime: Runtime) -> list[Method]:
    """Reads inline, changes in a task (admins)."""
    dlq = runtime.dlq

    def page(method: str, args: dict[str, Any], *, full: bool) -> dict[str, Any]:
        check_names(method, args, PAGE_ARGS)
        after = args.get("after")
        if after is not None and not isinstance(after, str):
            msg = f"{method}: after must be the cursor a previous page answered (next)"
            raise BadRequestRefusal(msg)
        return dlq.page(
            parse_filter(method, args), after=after, limit=page_limit(method, args), full=full
        )

    def dlq_list(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        return page("dlq.list", args, full=False)

    def dlq_export(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        return page("dlq.export", args, full=True)

    def dlq_get(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any] | None:
        job = dlq.get(job_id_arg("dlq.get", args))
        if job is None or job.state is not JobState.DEAD:
            return None
        return job.to_wire(runtime.jobs.now())

    async def dlq_retry(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("dlq.retry", args, RETRY_ARGS)
        rate = args.get("rate")
        if rate is not None and (
            not isinstance(rate, int | float) or isinstance(rate, bool) or not rate > 0
        ):
            raise BadRequestRefusal("dlq.retry: rate must be a number of jobs per second > 0")
        if "job_id" in args:
            job_id = job_id_arg("dlq.retry", {"job_id": args["job_id"]})
            return await dlq.retry(job_id=job_id, rate=rate)
        return await dlq.retry(filters=_bulk_filter("dlq.retry", args), rate=rate)

    async def dlq_kill(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("dlq.kill", args, KILL_ARGS)
        if "job_id" in args:
            return await dlq.kill(job_id=job_id_arg("dlq.kill", {"job_id": args["job_id"]}))
        return await dlq.kill(
            operation=_text("dlq.kill", args, "operation"), queue=_text("dlq.kill", args, "queue")
        )

    async def dlq_purge(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("dlq.purge", args, PURGE_ARGS)
        filters = _bulk_filter("dlq.purge", args)
        return await dlq.purge(filters, confirm=_flag("dlq.purge", args, "confirm"))

    return [
        Method("dlq.list", inline=dlq_list),
        Method("dlq.get", inline=dlq_get),
        Method("dlq.export", inline=dlq_export),
        Method("dlq.retry", handler=dlq_retry, admin=True),
        Method("dlq.kill", handler=dlq_kill, admin=True),
        Method("dlq.purge", handler=dlq_purge, admin=True),
    ]
