"""The breaker methods: ``breaker.list`` (everyone) and ``breaker.force`` (admins only)."""

from __future__ import annotations

from typing import Any, Final

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon import views
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["FORCE_STATES", "methods"]

FORCE_STATES: Final = ("open", "closed", "disabled", "reset")
FORCE_ARGS: Final = frozenset({"name", "state"})


def methods(runtime: Runtime) -> list[Method]:
    """``breaker.list`` answers inline from the board's snapshot; ``breaker.force`` replies once
    the new state is on disk (a ``kill -9`` right after the reply keeps it)."""
    breakers = runtime.breakers  # set once at start; a reload reconfigures it in place

    def breaker_list(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
        check_names("breaker.list", args, frozenset())
        return breakers.views()

    async def breaker_force(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("breaker.force", args, FORCE_ARGS)
        name, state = args.get("name"), args.get("state")
        if not isinstance(name, str) or not name:
            raise BadRequestRefusal("breaker.force: name must be a breaker key such as 'clay'")
        if state not in FORCE_STATES:
            msg = f"breaker.force: state must be one of {', '.join(FORCE_STATES)}, got {state!r}"
            raise BadRequestRefusal(msg)
        known = views.breaker_keys(runtime)
        if name not in known:
            msg = f"breaker.force: no breaker {name!r}; known: {', '.join(sorted(known))}"
            raise BadRequestRefusal(msg)
        mark = views.storage_mark(runtime)
        view = await breakers.force(name, state)
        # The board persists the transition with write_nowait; an empty write is a flush
        # barrier, so the reply means "on disk" (a kill -9 right after it keeps the state).
        await views.durable_flush(runtime, mark)
        return views.breaker_view(runtime, name, view)

    return [
        Method("breaker.list", inline=breaker_list),
        Method("breaker.force", handler=breaker_force, admin=True),
    ]
