"""The event hub: topics, order, bounded buffers that count what they lose, the log tap, ticks.

The sink here is an in-memory stand-in for a connection (the real socket path is proven in
tests/e2e/test_subscribe.py); it can stall like a peer that stopped reading.
"""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest
import structlog
import trio

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon.events import (
    EVENT_FAMILIES,
    EventHub,
    Subscription,
    event_payload,
    plain,
)
from claykiln.daemon.logs import alert, configure_logging, get_logger, set_secrets

TIMEOUT = 5.0


class MemorySink:
    """Keeps the notifications sent to it; ``stall()`` makes it stop taking frames."""

    def __init__(self) -> None:
        self.channel: object = self
        self.notes: list[tuple[str, dict[str, Any]]] = []
        self._stalled = False
        self._moving = trio.Event()
        self._closed = trio.Event()
        self.detached = 0

    def send(self, frame: bytes) -> None:
        kind, method, (args,) = msgpack.unpackb(frame)
        assert kind == 2
        self.notes.append((method, args))

    async def wait_drained(self) -> None:
        while self._stalled and not self._closed.is_set():
            await self._moving.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def detach(self) -> None:
        self.detached += 1

    def stall(self) -> None:
        self._stalled = True
        self._moving = trio.Event()

    def resume(self) -> None:
        self._stalled = False
        self._moving.set()

    def close(self) -> None:
        self._closed.set()
        self._moving.set()


class ListTicks:
    """A tick source counting its builds."""

    def __init__(self) -> None:
        self.built = 0

    def build(self) -> dict[str, Any]:
        self.built += 1
        return {"seq": self.built}


@pytest.fixture
async def hub() -> AsyncIterator[EventHub]:
    running = EventHub(wall_clock=lambda: 1000.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(running.run)
        yield running
        nursery.cancel_scope.cancel()


@pytest.fixture
def _tapped_logging() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(fmt="json", level="error", stream=stream)
    yield stream
    set_secrets(())
    structlog.reset_defaults()


def _event(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, "logger": "claykiln.test", **fields}


async def _settle() -> None:
    """Let the pumps run until they are idle."""
    await trio.testing.wait_all_tasks_blocked()


async def test_events_reach_the_subscriptions_of_their_topic_in_order(hub: EventHub) -> None:
    """A breaker subscriber gets every breaker event in publishing order, nothing else."""
    sink, other = MemorySink(), MemorySink()
    hub.subscribe(sink, ["breaker"])
    hub.subscribe(other, ["gate"])
    for n in range(20):
        hub.publish_event("warning", _event("breaker.opened", key=f"b{n % 3}", n=n))
        hub.publish_event("warning", _event("lane.rejected", lane="bulk"))  # no topic
    with trio.fail_after(TIMEOUT):
        await _settle()
    assert [args["fields"]["n"] for _, args in sink.notes] == list(range(20))
    assert {method for method, _ in sink.notes} == {"event"}
    assert other.notes == []
    assert all(args["dropped"] == 0 for _, args in sink.notes)


async def test_alert_topic_takes_every_alert_once(hub: EventHub) -> None:
    """``alert`` gets alerts of any family; a breaker+alert subscriber gets each event once."""
    alerts, both = MemorySink(), MemorySink()
    hub.subscribe(alerts, ["alert"])
    hub.subscribe(both, ["breaker", "alert"])
    hub.publish_event("warning", _event("breaker.opened", alert=True, severity="warning"))
    hub.publish_event("critical", _event("storage.open_failed", alert=True, severity="critical"))
    hub.publish_event("info", _event("breaker.half_open"))
    with trio.fail_after(TIMEOUT):
        await _settle()
    assert [a["event"] for _, a in alerts.notes] == ["breaker.opened", "storage.open_failed"]
    assert [a["event"] for _, a in both.notes] == [
        "breaker.opened",
        "storage.open_failed",
        "breaker.half_open",
    ]
    assert alerts.notes[1][1]["topic"] == "alert"
    assert alerts.notes[1][1]["severity"] == "critical"


async def test_a_stalled_subscriber_loses_its_oldest_and_learns_how_many(hub: EventHub) -> None:
    """Publishing never waits for a stalled sink: its buffer keeps the newest, counts the rest,
    and the next notification it gets says how many were lost."""
    slow, fast = MemorySink(), MemorySink()
    hub.subscribe(slow, ["gate"], buffer=4)
    hub.subscribe(fast, ["gate"], buffer=4)
    slow.stall()
    with trio.fail_after(TIMEOUT):
        for n in range(10):
            hub.publish_event("warning", _event("gate.closed", gate="clay", n=n))
            await _settle()  # the fast sink keeps up; the slow one's pump waits
    assert [a["fields"]["n"] for _, a in fast.notes] == list(range(10))
    assert slow.notes == []
    slow.resume()
    with trio.fail_after(TIMEOUT):
        await _settle()
    got = [a["fields"]["n"] for _, a in slow.notes]
    assert got == [6, 7, 8, 9]  # the buffer kept the 4 newest
    assert [a["dropped"] for _, a in slow.notes] == [6, 6, 6, 6]
    assert hub.stats()["dropped"] == 6


async def test_a_newer_tick_replaces_one_still_waiting() -> None:
    """Ticks do not pile up behind a slow reader: one waits at most, the others count as lost."""
    hub = EventHub()
    sink = MemorySink()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        sub = hub.subscribe(sink, ["tick", "breaker"], buffer=8)
        sink.stall()
        for seq in range(5):
            hub.publish_tick({"seq": seq})
        hub.publish_event("warning", _event("breaker.opened", key="clay"))
        with trio.fail_after(TIMEOUT):
            await _settle()
        assert [m for m, _ in sub.buffer] == ["tick", "event"]
        sink.resume()
        with trio.fail_after(TIMEOUT):
            await _settle()
        nursery.cancel_scope.cancel()
    assert [(m, a.get("seq")) for m, a in sink.notes] == [("tick", 4), ("event", None)]
    assert sink.notes[-1][1]["dropped"] == 4


async def test_a_closed_sink_ends_its_subscriptions(hub: EventHub) -> None:
    """The pump notices the connection closing, forgets the subscription and detaches once."""
    sink = MemorySink()
    hub.subscribe(sink, ["breaker"])
    hub.subscribe(sink, ["gate"])
    assert hub.stats()["subscriptions"] == 2
    sink.close()
    with trio.fail_after(TIMEOUT):
        await _settle()
    assert hub.stats()["subscriptions"] == 0
    assert sink.detached == 2


async def test_unsubscribe_needs_the_channel_that_opened_it(hub: EventHub) -> None:
    """Another connection cannot end a subscription; its own can."""
    sink = MemorySink()
    sub = hub.subscribe(sink, ["tick"])
    assert hub.unsubscribe(sub.id, object()) is None
    assert hub.unsubscribe(sub.id, sink.channel) is sub
    assert hub.unsubscribe(sub.id, sink.channel) is None
    with trio.fail_after(TIMEOUT):
        await _settle()
    assert sink.detached == 1


@pytest.mark.parametrize(
    ("topics", "buffer", "match"),
    [
        (["tick", "nope"], 8, "unknown topic"),
        ([], 8, "unknown topic"),
        (["tick"], 0, "buffer must be"),
        (["tick"], 100_000, "buffer must be"),
    ],
)
async def test_bad_subscriptions_are_refused(
    hub: EventHub, topics: list[str], buffer: int, match: str
) -> None:
    """Unknown topics and buffers out of range are ``bad_request`` naming the fix."""
    with pytest.raises(BadRequestRefusal, match=match):
        hub.subscribe(MemorySink(), topics, buffer)


async def test_subscriptions_are_bounded() -> None:
    """Past the daemon's and the connection's caps a subscription is refused."""
    hub = EventHub(max_subscriptions=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        one = MemorySink()
        for _ in range(3):
            hub.subscribe(MemorySink(), ["tick"])
        with pytest.raises(BadRequestRefusal, match="3 subscriptions are open"):
            hub.subscribe(one, ["tick"])
        nursery.cancel_scope.cancel()
    with pytest.raises(BadRequestRefusal, match="not running"):
        hub.subscribe(MemorySink(), ["tick"])


async def test_ticks_come_every_interval(autojump_clock: trio.abc.Clock) -> None:
    """The hub builds a tick at start and then one per interval, read anew each time."""
    hub = EventHub()
    ticks = ListTicks()
    sink = MemorySink()
    interval = [1.0]
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run, ticks, lambda: interval[0])
        assert hub.last_tick == {"seq": 1}
        hub.subscribe(sink, ["tick"])
        await trio.sleep(3.5)
        interval[0] = 0.5
        await trio.sleep(2.1)  # ticks at 4.0, 4.5, 5.0, 5.5
        nursery.cancel_scope.cancel()
    assert [a["seq"] for _, a in sink.notes] == [2, 3, 4, 5, 6, 7, 8]
    assert hub.tick_interval == 0.5


@pytest.mark.usefixtures("_tapped_logging")
async def test_the_log_tap_feeds_events_whatever_the_level(hub: EventHub) -> None:
    """Lines of the event families and alerts reach subscribers even below ``log_level``,
    secrets redacted as in the log; other lines do not."""
    set_secrets(["hunter2-secret"])
    sink = MemorySink()
    hub.subscribe(sink, ["breaker", "gate", "alert"])
    log = get_logger("claykiln.breaker")
    log.info("breaker.half_open", key="clay", previous="open", reason="reset_timeout")
    alert(log, "breaker.closed", severity="info", key="clay", note="token hunter2-secret")
    log.info("lane.admitted", lane="bulk")
    alert(get_logger("claykiln.pipeline"), "upstream.credentials_rejected", severity="critical")
    with trio.fail_after(TIMEOUT):
        await _settle()
    names = [a["event"] for _, a in sink.notes]
    assert names == ["breaker.half_open", "breaker.closed", "upstream.credentials_rejected"]
    closed = sink.notes[1][1]
    assert closed["level"] == "info" and closed["alert"] is True and closed["severity"] == "info"
    assert closed["fields"] == {"key": "clay", "note": "token [REDACTED]"}
    assert closed["time"] == 1000.0
    assert sink.notes[2][1]["topic"] == "alert"


@pytest.mark.usefixtures("_tapped_logging")
async def test_events_logged_in_another_thread_arrive_in_order(hub: EventHub) -> None:
    """A worker thread's lines are handed to the hub's thread, in that thread's order."""
    sink = MemorySink()
    hub.subscribe(sink, ["gate"])
    log = get_logger("claykiln.gate")

    def log_many() -> None:
        for n in range(50):
            log.warning("gate.closed", gate="clay", n=n)

    with trio.fail_after(TIMEOUT):
        await trio.to_thread.run_sync(log_many)
        await _settle()
    assert [a["fields"]["n"] for _, a in sink.notes] == list(range(50))
    assert threading.active_count() >= 1


async def test_the_log_is_tapped_only_while_someone_subscribes(
    _tapped_logging: io.StringIO,
) -> None:
    """No subscriber, no tap; the first subscription installs it, the last one to end (or the
    hub stopping) removes it, and logging goes on."""
    from claykiln.daemon import logs

    hub = EventHub()
    sink = MemorySink()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        assert logs._event_sink is None
        sub = hub.subscribe(sink, ["breaker"])
        assert logs._event_sink is not None
        assert logs._event_families == frozenset(EVENT_FAMILIES)
        hub.unsubscribe(sub.id, sink.channel)
        assert logs._event_sink is None
        hub.subscribe(sink, ["breaker"])
        nursery.cancel_scope.cancel()
    assert logs._event_sink is None
    get_logger("claykiln.breaker").error("breaker.persist_failed", key="clay")
    assert "breaker.persist_failed" in _tapped_logging.getvalue()


def test_fields_become_plain_msgpack_values() -> None:
    """Enums, paths, sets and deep nesting become strings or lists msgpack can carry."""
    from pathlib import Path

    deep: dict[str, Any] = {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}
    out = plain({"path": Path("/x"), "set": {1}, "deep": deep, "t": (1, "2")})
    assert out["path"] == "/x" and out["set"] == [1] and out["t"] == [1, "2"]
    msgpack.packb(out)
    payload = event_payload("info", {"event": "gate.opened", "gate": "clay"}, 5.0)
    assert payload == {
        "topic": "gate",
        "event": "gate.opened",
        "level": "info",
        "alert": False,
        "severity": None,
        "time": 5.0,
        "fields": {"gate": "clay"},
    }


def test_subscription_offer_keeps_at_most_capacity() -> None:
    """The buffer never holds more than its capacity; losses are counted."""
    sub = Subscription(1, frozenset({"gate"}), MemorySink(), 3)
    for n in range(10):
        sub.offer("event", {"n": n})
    assert [p["n"] for _, p in sub.buffer] == [7, 8, 9]
    assert sub.dropped == 7
