"""Clay's lifetime cap per webhook source: ``quota.list`` (everyone), ``quota.release`` (admins).

``quota.list {after?, limit?}`` answers inline, in source order: ``{items: [{source, rows, cap,
used, held, held_at, held_by, waiting}], next}``, ``waiting`` counting the source's waiting jobs
up to ``WAITING_COUNT_CAP``. ``quota.release {source}`` un-holds a source held at its cap (Clay
raised it, or the count was wrong): its waiting jobs run again; the answer is the source's entry,
once on disk.
"""

from __future__ import annotations

from typing import Any, Final

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.methods.jobs import page_limit
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["WAITING_COUNT_CAP", "methods"]

WAITING_COUNT_CAP: Final = 100_000
LIST_ARGS: Final = frozenset({"after", "limit"})


def methods(runtime: Runtime) -> list[Method]:
    """``quota.list`` inline; ``quota.release`` asks the scheduler (which owns the holds)."""
    jobs, scheduler = runtime.jobs, runtime.scheduler

    def quota_list(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("quota.list", args, LIST_ARGS)
        limit = page_limit("quota.list", args)
        after = args.get("after")
        if after is not None and not isinstance(after, str):
            raise BadRequestRefusal("quota.list: after must be the last source of a page")
        start = None if after is None else after + "\x00"
        page = jobs.quotas(start, limit)
        items = []
        for quota in page:
            item = quota.to_wire()
            item["waiting"] = jobs.queue_size(quota.source, WAITING_COUNT_CAP)
            items.append(item)
        more = len(page) >= limit
        return {"items": items, "next": page[-1].source if more and page else None}

    async def quota_release(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("quota.release", args, frozenset({"source"}))
        source = args.get("source")
        if not isinstance(source, str) or not source:
            msg = "quota.release: source must be a source from quota.list, e.g. 'clay:/v3/...'"
            raise BadRequestRefusal(msg)
        if not jobs.quota(source).held:
            msg = f"quota.release: source {source!r} is not held"
            raise BadRequestRefusal(msg)
        return (await scheduler.release(source)).to_wire()

    return [
        Method("quota.list", inline=quota_list),
        Method("quota.release", handler=quota_release, admin=True),
    ]
