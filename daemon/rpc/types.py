"""The value types shared by the server, its connections and the method table.

``ServerLimits`` (what the server enforces), ``RequestContext`` (who asked, handed to a handler)
and ``Method`` (one entry of the method table). They live apart from ``server.py`` and
``connection.py`` so both, and the method families (``claykiln.daemon.methods``), import them
without a cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs

from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.protocol import Limits

__all__ = [
    "DEFAULT_MAX_CONTAINERS",
    "Answered",
    "Handler",
    "InlineHandler",
    "Later",
    "Method",
    "RequestContext",
    "ServerLimits",
]


DEFAULT_MAX_CONTAINERS = 25_000


def _server_protocol_limits() -> Limits:
    return Limits(max_containers=DEFAULT_MAX_CONTAINERS)


@attrs.frozen
class ServerLimits:
    """What the server enforces (``[daemon.limits]``, docs/configuration.md); seconds, bytes.

    ``max_connections_per_uid``: connections one peer uid may hold at once.
    ``frame_timeout``: a frame must arrive whole within this long of its first byte.
    ``reply_timeout``: a connection whose replies have waited this long with not one byte read
    by the peer is cut off. ``max_reply_backlog``: unread reply bytes past which the server
    stops reading the connection. ``shared_answer_age``: how long a ``shared`` method's answer
    is reused. ``share_window``, ``share_busy``, ``share_max_wait``: each peer's fair share of
    a busy loop (``share.py``; a ``share_window`` of 0 turns shares off). ``busy_poll``: how
    long the shared poller polls without blocking after serving a reader (``poller.py``; 0: off).
    """

    protocol: Limits = attrs.field(factory=_server_protocol_limits)
    max_connections: int = 256
    max_connections_per_uid: int = 128
    max_in_flight: int = 128
    idle_timeout: float = 300.0
    frame_timeout: float = 10.0
    reply_timeout: float = 30.0
    max_reply_backlog: int = 4 * 1024 * 1024
    shared_answer_age: float = 0.1
    share_window: float = 1.0
    share_busy: float = 0.02
    share_max_wait: float = 0.5
    busy_poll: float = 0.0


@attrs.define
class RequestContext:
    """Who asked, on which connection, with which msgid; handlers read it, never keep it.

    Read-only by contract but not frozen: one is built per request on the hot path, and a
    frozen attrs instance costs 0.24 us more to build (measured; ~6% of a pipelined request).
    """

    peer: PeerCred
    conn_id: int
    msgid: int
    admin: bool


Handler = Callable[[RequestContext, Any], Awaitable[Any]]
InlineHandler = Callable[[RequestContext, Any], Any]


@attrs.frozen
class Answered:
    """What a ``precheck`` returns when it answered the request itself (an idempotent replay,
    a fallback from the cache): the connection sends ``result`` as the reply, no task runs.

    ``packed``: the result already packed as one msgpack object (a stored replay); the
    connection sends those bytes as the result, unchecked, and ``result`` is only what the
    precheck's wrappers look at. Pass only bytes this daemon packed and kept intact.
    """

    result: Any
    packed: bytes | None = None


Delivery = Callable[[Any, BaseException | None], None]
"""How a ``Later`` hands its outcome to its connection: ``(result, None)`` or ``(None, error)``."""
_UNSETTLED: Final = object()


class Later:
    """What a ``precheck`` returns when the reply will come from outside any task (e.g. the
    storage writer, once a commit holding the request's write is durable): no task runs; the
    connection counts the request in flight, like a running handler, and binds the ``Later``
    to it before the precheck's caller sees anything else.

    Whoever holds it then calls ``answer(result)`` or ``refuse(error)`` once, on the trio
    thread, without blocking (later calls are ignored). A ``Refusal`` is the error reply, as
    from a handler; ``StoreFull`` is ``storage_full``; any other exception is a bug (logged,
    answered ``internal``). If the connection is closed by then, the reply is dropped; the drain
    answers one still unsettled at its end ``shutting_down`` (``started: true``).
    """

    __slots__ = ("_deliver", "_outcome")

    def __init__(self) -> None:
        self._deliver: Delivery | None = None
        self._outcome: tuple[Any, BaseException | None] | object = _UNSETTLED

    @property
    def settled(self) -> bool:
        """Answered or refused (whether or not the connection has sent it yet)."""
        return self._outcome is not _UNSETTLED

    def answer(self, result: Any) -> None:
        """Reply with ``result``."""
        self._settle(result, None)

    def refuse(self, error: BaseException) -> None:
        """Reply with ``error`` (see the class docstring)."""
        self._settle(None, error)

    def bind(self, deliver: Delivery) -> None:
        """The connection's side: where the outcome goes (at once if it is already known)."""
        outcome = self._outcome
        if isinstance(outcome, tuple):
            deliver(*outcome)
        else:
            self._deliver = deliver

    def _settle(self, result: Any, error: BaseException | None) -> None:
        if self._outcome is not _UNSETTLED:
            return
        self._outcome = (result, error)
        deliver, self._deliver = self._deliver, None
        # Let go of the delivery once used: it refers back to this Later (the connection's
        # set of them), and a Later per submit left as a cycle made the collector run every
        # half second under load, 5-21 ms each time.
        if deliver is not None:
            deliver(result, error)


@attrs.frozen
class Method:
    """One RPC method. Exactly one of ``handler`` (async, own task) or ``inline`` (sync) is set.

    ``precheck`` (sync) validates on the reader and may raise a ``Refusal`` to refuse before a
    task is spawned, return ``Answered(result)`` to reply at once, or a ``Later`` whose holder
    replies when it can (no task); otherwise the handler receives what it returns instead of
    the raw args.
    ``admin`` methods are refused with ``forbidden`` for peers outside the admin set.
    ``shared`` (inline only): the answer does not depend on the caller, so a request without
    arguments may get the packed answer computed for another, up to
    ``ServerLimits.shared_answer_age`` old and only while no other request ran since
    (``status``: an expensive read every connection may flood).
    """

    name: str
    handler: Handler | None = None
    inline: InlineHandler | None = None
    precheck: InlineHandler | None = None
    admin: bool = False
    shared: bool = False
