"""Counting ``call`` answers for ``kiln top`` and the metrics (``Runtime.call_figures``).

``counted(runtime, precheck, handler)`` wraps the ``call`` method's precheck and handler so
that every answer is recorded once, by operation and outcome, with its duration: an answer map
is ``replayed``, ``coalesced``, ``fallback``, ``ok`` (status below 400) or ``client_error``; a
refusal is its error code; a call whose caller went away is ``cancelled``. An operation that is
not configured counts as ``(unknown)``, so callers cannot grow the set of series. The cost per
call is two clock reads and a dict increment.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import trio

from claykiln.actors.errors import Refusal
from claykiln.actors.keyed_call import PackedAnswer
from claykiln.daemon.rpc.types import Answered, Handler, InlineHandler, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["UNKNOWN_OPERATION", "answer_outcome", "counted"]

UNKNOWN_OPERATION: Final = "(unknown)"


def answer_outcome(answer: Mapping[str, Any]) -> str:
    """The outcome label of a ``call`` answer map."""
    for flag in ("replayed", "coalesced", "fallback"):
        if answer.get(flag):
            return flag
    status = answer.get("status")
    return "client_error" if isinstance(status, int) and status >= 400 else "ok"


def counted(
    runtime: Runtime, precheck: InlineHandler, handler: Handler
) -> tuple[InlineHandler, Handler]:
    """``precheck`` and ``handler`` recording each answer in ``runtime.call_figures``."""
    figures = runtime.call_figures

    def label(name: object) -> str:
        if isinstance(name, str) and name in runtime.pipeline.operations:
            return name
        return UNKNOWN_OPERATION

    def counted_precheck(ctx: RequestContext, args: Any) -> Any:
        # A precheck never waits: its duration is real time (one C call, not trio's clock).
        started = time.perf_counter()
        try:
            prepared = precheck(ctx, args)
        except Refusal as exc:
            name = args.get("operation") if isinstance(args, dict) else None
            figures.record(label(name), exc.code, time.perf_counter() - started)
            raise
        if isinstance(prepared, Answered):
            name = args.get("operation") if isinstance(args, dict) else None
            result = prepared.result
            if isinstance(result, PackedAnswer):
                outcome = result.outcome
            else:
                outcome = answer_outcome(result) if isinstance(result, dict) else "ok"
            figures.record(label(name), outcome, time.perf_counter() - started)
        return prepared

    async def counted_handler(ctx: RequestContext, prepared: Any) -> Any:
        started = trio.current_time()
        request = getattr(prepared, "request", None)
        name = label(getattr(request, "operation", None))
        outcome = "cancelled"
        try:
            answer = await handler(ctx, prepared)
            outcome = answer_outcome(answer) if isinstance(answer, dict) else "ok"
            return answer
        except Refusal as exc:
            outcome = exc.code
            raise
        except Exception:
            outcome = "internal"
            raise
        finally:
            figures.record(name, outcome, trio.current_time() - started)

    return counted_precheck, counted_handler
