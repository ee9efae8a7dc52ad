"""The idempotency methods: ``idempotency.get`` (everyone) and ``idempotency.forget`` (admins).

``idempotency.get {key}`` answers inline from storage: the key's record (state, operation,
fingerprint, when it started and expires, what was sent, the stored result) with ``expired``,
or nil when there is none. ``idempotency.forget {key}`` deletes the record durably, so the next
call with the key runs again (for a key in doubt once the app checked the upstream); a key in
flight is refused with ``idempotency_in_flight``.
"""

from __future__ import annotations

from typing import Any, Final

from claykiln.actors.errors import BadRequestRefusal
from claykiln.actors.idempotency_record import check_key
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["methods"]

KEY_ARGS: Final = frozenset({"key"})


def _key(method: str, args: dict[str, Any]) -> str:
    check_names(method, args, KEY_ARGS)
    key = args.get("key")
    try:
        return check_key(key)
    except BadRequestRefusal:
        msg = f"{method}: key must be an idempotency key (1-255 printable ASCII characters)"
        raise BadRequestRefusal(msg) from None


def methods(runtime: Runtime) -> list[Method]:
    """``idempotency.get`` inline; ``idempotency.forget`` in a task (a durable write)."""
    idempotency = runtime.idempotency

    def get(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any] | None:
        key = _key("idempotency.get", args)
        record = idempotency.lookup_current(key)
        if record is None:
            return None
        out = record.to_wire()
        out["expired"] = record.expired(idempotency.now())
        return out

    async def forget(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        key = _key("idempotency.forget", args)
        return {"key": key, "forgotten": await idempotency.forget(key)}

    return [
        Method("idempotency.get", inline=get),
        Method("idempotency.forget", handler=forget, admin=True),
    ]
