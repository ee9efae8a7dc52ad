"""The ``subscribe`` family: ``subscribe`` and ``unsubscribe`` (docs/protocol.md, "Subscribe").

``subscribe {topics?, buffer?}`` opens a subscription on the caller's connection and answers at
once with ``{subscription, topics, buffer, tick_interval, tick}`` (``tick``: the latest stats
tick, when ``tick`` is a topic, so a one-shot view needs no wait); notifications follow on the
same connection (``claykiln.daemon.events``). ``unsubscribe {subscription}`` ends one opened on
the same connection and answers ``{subscription, sent, dropped}``. Both run inline on the
reader. A subscription ends with its connection.
"""

from __future__ import annotations

from typing import Any

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon.events import SUBSCRIBER_BUFFER, TOPICS
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.rpc.connection import CURRENT_CONNECTION, Connection
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["ConnectionSink", "methods"]

SUBSCRIBE_ARGS = frozenset({"topics", "buffer"})
UNSUBSCRIBE_ARGS = frozenset({"subscription"})


class ConnectionSink:
    """One subscription's view of its connection (``events.NotificationSink``): while it is
    attached the connection counts it in ``streams`` (a subscribed connection is not idle)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.channel: object = connection
        connection.streams += 1
        self._attached = True

    def send(self, frame: bytes) -> None:
        self.connection.send(frame)

    async def wait_drained(self) -> None:
        await self.connection.wait_drained()

    @property
    def closed(self) -> bool:
        replies = self.connection.replies
        return replies.closed or replies.broken

    async def wait_closed(self) -> None:
        await self.connection.flushed.wait()

    def detach(self) -> None:
        if self._attached:
            self._attached = False
            self.connection.streams -= 1


def _topics(args: dict[str, Any]) -> list[str]:
    raw = args.get("topics")
    if raw is None:
        return sorted(TOPICS)
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        msg = f"subscribe: topics must be a list of strings from {sorted(TOPICS)}"
        raise BadRequestRefusal(msg)
    return raw


def methods(runtime: Runtime) -> list[Method]:
    """``subscribe`` and ``unsubscribe``, inline on the connection's reader."""
    hub = runtime.events

    def connection_of(method: str) -> Connection:
        connection = CURRENT_CONNECTION.get(None)
        if connection is None:
            msg = f"{method} needs a connection to push notifications to"
            raise BadRequestRefusal(msg)
        return connection

    def subscribe(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("subscribe", args, SUBSCRIBE_ARGS)
        topics = _topics(args)
        buffer = args.get("buffer", SUBSCRIBER_BUFFER)
        if not isinstance(buffer, int) or isinstance(buffer, bool):
            raise BadRequestRefusal("subscribe: buffer must be an integer (notifications)")
        sink = ConnectionSink(connection_of("subscribe"))
        try:
            sub = hub.subscribe(sink, topics, buffer)
        except BaseException:
            sink.detach()
            raise
        tick = hub.last_tick if "tick" in sub.topics else None
        return {
            "subscription": sub.id,
            "topics": sorted(sub.topics),
            "buffer": sub.capacity,
            "tick_interval": hub.tick_interval,
            "tick": tick,
        }

    def unsubscribe(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("unsubscribe", args, UNSUBSCRIBE_ARGS)
        sub_id = args.get("subscription")
        if not isinstance(sub_id, int) or isinstance(sub_id, bool):
            raise BadRequestRefusal("unsubscribe: subscription must be the id subscribe gave")
        sub = hub.unsubscribe(sub_id, connection_of("unsubscribe"))
        if sub is None:
            msg = f"unsubscribe: no subscription {sub_id} on this connection"
            raise BadRequestRefusal(msg)
        return {"subscription": sub.id, "sent": sub.sent, "dropped": sub.dropped}

    return [Method("subscribe", inline=subscribe), Method("unsubscribe", inline=unsubscribe)]
