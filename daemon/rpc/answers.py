"""How a request that leaves the reader is answered: in a task of its own (``run_request``) or
by the holder of a ``Later`` (``await_later``).

Both count the request in flight on its connection and in the dispatch from the moment it is
handed over until its reply is queued (``Connection.finish_request``). The outcome becomes the
reply: a result, a ``Refusal``'s error, ``storage_full`` for ``StoreFull``, ``internal`` (and a
``server.handler_crashed`` line) for anything else; once the drain aborted, ``shutting_down``
with ``details.started = true``.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog
import trio

from claykiln.actors.errors import InternalRefusal, Refusal, StorageFullRefusal
from claykiln.daemon.logs import get_logger
from claykiln.daemon.rpc.dispatch import Dispatch
from claykiln.daemon.rpc.protocol import Request
from claykiln.daemon.rpc.replies import later_reply, pack_error, pack_reply, stopped_reply
from claykiln.daemon.rpc.types import Handler, Later, RequestContext
from claykiln.storage import StoreFull

__all__ = ["Answering", "await_later", "drop_traceback", "run_request"]

log = get_logger("claykiln.server")  # the server's logger: a crashed handler is a server event


class Answering(Protocol):
    """What answering needs of a connection (``Connection``, without importing it back)."""

    dispatch: Dispatch
    in_flight: int
    aborting: bool
    laters: set[Later]

    def send(self, frame: bytes) -> None: ...

    def finish_request(self) -> None: ...


def await_later(conn: Answering, later: Later, req: Request) -> None:
    """Count a request a ``Later`` answers in flight, as a running task is; its outcome
    becomes the reply as a handler's would (``shutting_down`` once the drain aborted)."""
    conn.in_flight += 1
    conn.dispatch.begin_request()
    conn.laters.add(later)
    msgid, method = req.msgid, req.method

    def deliver(result: Any, error: BaseException | None) -> None:
        conn.laters.discard(later)
        conn.send(later_reply(msgid, method, result, error, aborting=conn.aborting))
        conn.finish_request()

    later.bind(deliver)


def drop_traceback(refusal: Refusal) -> None:
    """Let a refusal that has been answered go without the collector.

    A refusal raised through frames that hold what refers back to it (an actor's ``Reply``
    holds the error it raised; a function that raises its ``error`` argument holds it as a
    local) is a reference cycle: the refusal, its traceback, those frames. Each waited for the
    collector, which a serving daemon runs rarely (``views.GC_THRESHOLD``), so under an outage,
    where most calls end refused, thousands of such objects were garbage at any time. A refusal
    is answered, never logged with its traceback, so dropping the traceback once its reply is
    packed frees the frames and the refusal by reference counting.
    """
    refusal.__traceback__ = None


async def run_request(
    conn: Answering, handler: Handler, ctx: RequestContext, req: Request, prepared: Any
) -> None:
    """Run ``handler`` for ``req`` (already counted in flight) and queue its reply."""
    structlog.contextvars.bind_contextvars(msgid=req.msgid, method=req.method)
    try:
        result = await handler(ctx, prepared)
    except trio.Cancelled:
        if conn.aborting:  # stopped part way: it may have had effects (started=true)
            conn.send(stopped_reply(req.msgid))
        raise
    except Refusal as exc:
        if conn.aborting:
            conn.send(stopped_reply(req.msgid))
        else:
            conn.send(pack_error(req.msgid, exc.to_wire()))
        drop_traceback(exc)
    except StoreFull as exc:
        wire = StorageFullRefusal(f"storage is full: {exc}").to_wire()
        conn.send(pack_error(req.msgid, wire))
    except Exception:
        log.exception("server.handler_crashed")
        wire = InternalRefusal("internal error; see the daemon log").to_wire()
        conn.send(pack_error(req.msgid, wire))
    else:
        conn.send(pack_reply(req.msgid, result))
    finally:
        conn.finish_request()
