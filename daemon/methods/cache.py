"""The fallback cache methods: ``cache.list`` (everyone) and ``cache.purge`` (admins).

``cache.list {operation?, limit?}`` answers inline from storage, in key order: one map per kept
answer, ``{operation, key, stored_at, age, size, status}`` (``key`` is the rendered
``cache_key`` or the request's fingerprint). ``cache.purge {operation?}`` deletes the kept
answers (of one operation, or all) and answers ``{purged: n}`` once that is on disk.
"""

from __future__ import annotations

from typing import Any, Final

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["DEFAULT_LIST_LIMIT", "MAX_LIST_LIMIT", "methods"]

DEFAULT_LIST_LIMIT: Final = 100
MAX_LIST_LIMIT: Final = 10_000
LIST_ARGS: Final = frozenset({"operation", "limit"})
PURGE_ARGS: Final = frozenset({"operation"})


def _operation(method: str, args: dict[str, Any]) -> str | None:
    operation = args.get("operation")
    if operation is not None and (not isinstance(operation, str) or not operation):
        msg = f"{method}: operation must be the name of an operation, e.g. 'me'"
        raise BadRequestRefusal(msg)
    return operation


def methods(runtime: Runtime) -> list[Method]:
    """``cache.list`` inline; ``cache.purge`` in a task (durable deletes)."""
    cache = runtime.cache

    def cache_list(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
        check_names("cache.list", args, LIST_ARGS)
        operation = _operation("cache.list", args)
        limit = args.get("limit", DEFAULT_LIST_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_LIST_LIMIT:
            msg = f"cache.list: limit must be an integer in 1..{MAX_LIST_LIMIT}"
            raise BadRequestRefusal(msg)
        now = cache.now()
        out = []
        for answer in cache.entries(operation, limit=limit):
            op, _, key = answer.key.partition("\x00")
            out.append(
                {
                    "operation": op,
                    "key": key,
                    "stored_at": answer.stored_at,
                    "age": round(answer.age(now), 3),
                    "size": answer.size,
                    "status": answer.result.get("status"),
                }
            )
        return out

    async def cache_purge(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("cache.purge", args, PURGE_ARGS)
        operation = _operation("cache.purge", args)
        return {"operation": operation, "purged": await cache.purge(operation)}

    return [
        Method("cache.list", inline=cache_list),
        Method("cache.purge", handler=cache_purge, admin=True),
    ]
