"""The event hub: what ``subscribe`` streams to local clients (docs/protocol.md, "Subscribe").

Card:
- owns: the subscriptions (topics, a bounded buffer, counts of what each lost and got), the
  latest stats tick, one pump task per subscription.
- receives: log events through the log tap (``claykiln.daemon.logs.set_event_sink``): every
  line of the families in ``EVENT_FAMILIES`` (``breaker.opened``, ``gate.closed``,
  ``health.*``, ``dlq.dead`` ...) and every alert, in the order they were logged; a stats tick
  from its own loop every ``tick_interval`` (built by a ``TickSource``).
- sends: msgpack-rpc notifications ``[2, "event", [map]]`` and ``[2, "tick", [map]]`` to each
  subscriber's ``NotificationSink`` (its connection), by its pump, which hands a frame over only
  once the connection's earlier output has gone to the kernel. Every map carries ``dropped``,
  how many notifications this subscription has lost so far.
- never blocks a publisher: publishing appends to each matching buffer (``SUBSCRIBER_BUFFER``
  notifications by default); a newer tick replaces a tick still waiting, and a full buffer
  drops its oldest entry; both count in ``dropped``. A subscriber that reads slowly loses ticks
  and, if it falls far behind, old events; nothing else slows down.
- on a connection that closes: its subscriptions end (the pump sees it and forgets them).
- on cancellation: every pump ends, the log tap is removed. The tap is in place only while a
  subscription is open: without subscribers the log pays nothing for the hub.

Why a log tap rather than a callback per actor: the actors already log each transition at the
moment it happens, with a stable name and documented fields (docs/alerting.md); tapping the log
gives subscribers the same vocabulary operators alert on, in the same order, with no change in
the actors, for one dict lookup per log line. The tap sits ahead of the level filter, so the
configured ``log_level`` does not change the stream.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import attrs
import trio

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon.logs import set_event_sink
from claykiln.daemon.rpc.frames import encode_notification

__all__ = [
    "EVENT_FAMILIES",
    "MAX_SUBSCRIBER_BUFFER",
    "MAX_SUBSCRIPTIONS",
    "SUBSCRIBER_BUFFER",
    "TOPICS",
    "EventHub",
    "NotificationSink",
    "Subscription",
    "TickSource",
    "plain",
]

# Log event families streamed as events; "alert" takes every alert line, whatever its family.
EVENT_FAMILIES: Final = ("breaker", "gate", "health", "dlq")
TOPICS: Final = frozenset({"tick", "alert", *EVENT_FAMILIES})
SUBSCRIBER_BUFFER: Final = 64  # notifications waiting per subscription, by default
MAX_SUBSCRIBER_BUFFER: Final = 4096
MAX_SUBSCRIPTIONS: Final = 64  # open at once in the daemon
MAX_PER_CONNECTION: Final = 8
MAX_FIELD_DEPTH: Final = 6
HEAD_KEYS: Final = frozenset({"event", "logger", "alert", "severity", "level", "timestamp"})


class NotificationSink(Protocol):
    """Where a subscription's frames go (a connection: ``methods/subscribe.py``); ``channel``
    is what it sends on (subscriptions on one connection share it)."""

    channel: object

    def send(self, frame: bytes) -> None:
        """Queue one frame (never blocks)."""

    async def wait_drained(self) -> None:
        """Return once what was queued has left (or the sink closed)."""

    @property
    def closed(self) -> bool:
        """True once nothing sent will arrive any more."""

    async def wait_closed(self) -> None:
        """Return once the sink closed."""

    def detach(self) -> None:
        """The subscription ended (called once)."""


class TickSource(Protocol):
    """Builds the stats tick (``daemon/ticks.py``); called once per interval."""

    def build(self) -> dict[str, Any]: ...


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as msgpack can carry it: scalars as they are, containers walked (to
    ``MAX_FIELD_DEPTH``), anything else as its ``str``."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if depth >= MAX_FIELD_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, depth + 1) for v in value]
    return str(value)


def event_payload(level: str, event_dict: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The ``event`` notification's map for one log line (see docs/protocol.md)."""
    name = str(event_dict.get("event", ""))
    family = name.partition(".")[0]
    is_alert = event_dict.get("alert") is True
    return {
        "topic": family if family in EVENT_FAMILIES else "alert",
        "event": name,
        "level": level,
        "alert": is_alert,
        "severity": event_dict.get("severity") if is_alert else None,
        "time": now,
        "fields": {k: plain(v) for k, v in event_dict.items() if k not in HEAD_KEYS},
    }


@attrs.define(eq=False)
class Subscription:
    """One subscriber's topics, buffer and counts; only the hub touches it."""

    id: int
    topics: frozenset[str]
    sink: NotificationSink
    capacity: int
    buffer: deque[tuple[str, dict[str, Any]]] = attrs.Factory(deque)
    dropped: int = 0  # notifications lost (replaced ticks, full buffer)
    sent: int = 0
    wake: trio.Event = attrs.Factory(trio.Event)
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _tick_waiting: bool = False

    def wants(self, payload: Mapping[str, Any]) -> bool:
        """Does this subscription take the event ``payload``?"""
        return payload["topic"] in self.topics or (payload["alert"] and "alert" in self.topics)

    def offer(self, method: str, payload: dict[str, Any]) -> None:
        """Buffer one notification (never blocks; see the module docstring for what is lost)."""
        buffer = self.buffer
        if method == "tick" and self._tick_waiting:
            for index, (kind, _) in enumerate(buffer):
                if kind == "tick":
                    del buffer[index]
                    self.dropped += 1
                    break
        if len(buffer) >= self.capacity:
            kind, _ = buffer.popleft()
            self.dropped += 1
            if kind == "tick":
                self._tick_waiting = False
        buffer.append((method, payload))
        if method == "tick":
            self._tick_waiting = True
        self.wake.set()

    def take(self) -> tuple[str, dict[str, Any]]:
        method, payload = self.buffer.popleft()
        if method == "tick":
            self._tick_waiting = False
        return method, payload


class EventHub:
    """The subscriptions and their pumps (see the module docstring). ``run`` serves until
    cancelled; ``subscribe`` before it runs raises ``BadRequestRefusal``."""

    def __init__(
        self,
        *,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_subscriptions = max_subscriptions
        self._wall_clock = wall_clock
        self._subs: dict[int, Subscription] = {}
        self._next_id = 1
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: int | None = None
        self.tick_interval = 1.0
        self.last_tick: dict[str, Any] | None = None
        self.events = 0  # events published to subscribers since start
        self.ticks = 0
        self.dropped = 0  # notifications lost by subscriptions that ended
        self.subscribed = 0  # subscriptions opened since start

    # -- the methods' side ---------------------------------------------------------------------
    def subscribe(
        self, sink: NotificationSink, topics: Iterable[str], buffer: int = SUBSCRIBER_BUFFER
    ) -> Subscription:
        """Open a subscription to ``topics`` (a subset of ``TOPICS``); its pump starts now.

        Raises ``BadRequestRefusal`` for an unknown topic, a buffer out of
        ``1..MAX_SUBSCRIBER_BUFFER``, too many subscriptions, or a hub that is not running.
        """
        wanted = frozenset(topics)
        unknown = sorted(wanted - TOPICS)
        if unknown or not wanted:
            msg = f"subscribe: unknown topic(s) {unknown or '(none)'}; use {sorted(TOPICS)}"
            raise BadRequestRefusal(msg)
        if not 1 <= buffer <= MAX_SUBSCRIBER_BUFFER:
            msg = f"subscribe: buffer must be from 1 to {MAX_SUBSCRIBER_BUFFER} notifications"
            raise BadRequestRefusal(msg)
        if self._nursery is None:
            raise BadRequestRefusal("subscribe: the event hub is not running")
        if len(self._subs) >= self.max_subscriptions:
            msg = (
                f"subscribe: {self.max_subscriptions} subscriptions are open already; "
                "close one (unsubscribe, or end its connection)"
            )
            raise BadRequestRefusal(msg)
        same = sum(1 for s in self._subs.values() if s.sink.channel is sink.channel)
        if same >= MAX_PER_CONNECTION:
            msg = f"subscribe: at most {MAX_PER_CONNECTION} subscriptions per connection"
            raise BadRequestRefusal(msg)
        sub = Subscription(self._next_id, wanted, sink, buffer)
        self._next_id += 1
        if not self._subs:  # the first subscriber: tap the log from now on
            set_event_sink(self.publish_event, EVENT_FAMILIES)
        self._subs[sub.id] = sub
        self.subscribed += 1
        self._nursery.start_soon(self._pump, sub)
        return sub

    def unsubscribe(self, sub_id: int, channel: object) -> Subscription | None:
        """End subscription ``sub_id`` if it was opened on ``channel``; None when there is no
        such one."""
        sub = self._subs.get(sub_id)
        if sub is None or sub.sink.channel is not channel:
            return None
        self._forget(sub)
        sub.scope.cancel()
        return sub

    def stats(self) -> dict[str, Any]:
        """For ``status`` and metrics: subscriptions open, events and ticks published, losses."""
        open_subs = list(self._subs.values())
        return {
            "subscriptions": len(open_subs),
            "subscribed": self.subscribed,
            "events": self.events,
            "ticks": self.ticks,
            "dropped": self.dropped + sum(s.dropped for s in open_subs),
            "running": self._nursery is not None,
        }

    # -- publishing ----------------------------------------------------------------------------
    def publish_event(self, level: str, event_dict: Mapping[str, Any]) -> None:
        """One log line (the log tap's sink): buffered for every subscription that wants it.
        From another thread it is handed to the hub's thread first (order kept per thread)."""
        if self._thread is not None and threading.get_ident() != self._thread:
            token = self._token
            if token is not None:
                try:
                    token.run_sync_soon(self.publish_event, level, dict(event_dict))
                except trio.RunFinishedError:
                    pass
            return
        self.events += 1
        if not self._subs:
            return
        payload = event_payload(level, event_dict, self._wall_clock())
        for sub in self._subs.values():
            if sub.wants(payload):
                sub.offer("event", payload)

    def publish_tick(self, tick: dict[str, Any]) -> None:
        """A stats tick: kept as ``last_tick`` and buffered for every ``tick`` subscription."""
        self.ticks += 1
        self.last_tick = tick
        for sub in self._subs.values():
            if "tick" in sub.topics:
                sub.offer("tick", tick)

    # -- the actor -----------------------------------------------------------------------------
    async def run(
        self,
        ticks: TickSource | None = None,
        interval: Callable[[], float] = lambda: 1.0,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Tap the log, then tick every ``interval()`` seconds (read each time: a reload
        changes it) until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if ticks is not None:
                    self.tick_interval = interval()
                    self.publish_tick(ticks.build())
                task_status.started()
                if ticks is None:
                    await trio.sleep_forever()
                next_at = trio.current_time()
                while True:
                    self.tick_interval = interval()
                    next_at = max(next_at + self.tick_interval, trio.current_time())
                    await trio.sleep_until(next_at)
                    assert ticks is not None
                    self.publish_tick(ticks.build())
        finally:
            set_event_sink(None)
            self._nursery = None
            for sub in list(self._subs.values()):
                self._forget(sub)

    async def _pump(self, sub: Subscription) -> None:
        """Move ``sub``'s buffer to its sink, one frame at a time, each after the last left."""
        sink = sub.sink
        try:
            with sub.scope:
                async with trio.open_nursery() as watch:
                    watch.start_soon(_cancel_when_closed, sink, watch.cancel_scope)
                    while True:
                        while not sub.buffer:
                            await sub.wake.wait()
                            sub.wake = trio.Event()
                        await sink.wait_drained()
                        if sink.closed:
                            break
                        method, payload = sub.take()
                        sink.send(encode_notification(method, {**payload, "dropped": sub.dropped}))
                        sub.sent += 1
                    watch.cancel_scope.cancel()
        finally:
            self._forget(sub)

    def _forget(self, sub: Subscription) -> None:
        if self._subs.pop(sub.id, None) is not None:
            self.dropped += sub.dropped
            sub.sink.detach()
            if not self._subs:  # nobody listens: the log costs nothing more
                set_event_sink(None)


async def _cancel_when_closed(sink: NotificationSink, scope: trio.CancelScope) -> None:
    await sink.wait_closed()
    scope.cancel()
