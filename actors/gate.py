"""Rate gate: a token bucket per upstream plus a host-wide Retry-After closure.

Card
- owns: one ``Bucket`` per upstream (GCRA theoretical arrival time, closure end, counters, the
  admission times still ahead); the persisted closure records (through ``persist``).
- receives: ``_Reserve`` (ask: a token within a deadline), ``_Close`` (fire-and-forget: a 429/503
  Retry-After), ``_Refused`` (fire-and-forget: a fast-path rejection to count), ``_Reconfigure``
  (ask).
- replies: ``_Reserve`` -> the trio time at which the caller's token becomes available (the caller
  sleeps until then; the actor never sleeps on a caller's behalf), or ``RateLimitedRefusal``.
- sends to: nobody; ``persist(key, record)`` stores a closure as wall-clock time.
- publishes: ``GateBoard.views``, a ``Mapping[str, GateView]`` replaced wholesale after every batch;
  ``acquire`` answers unlimited upstreams and certain rejections from it without an ask.
- on cancellation / on failure: the inbox closes, every queued or unanswered ask fails with
  ``ActorStopped`` and later asks raise it at once.

The pacing itself (GCRA: ``RatePolicy``, ``Bucket``, ``GateView``, ``earliest_admission``) is
pure and lives in ``claykiln.actors.gate_bucket``; its names are re-exported here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from claykiln.actors.errors import RateLimitedRefusal
from claykiln.actors.gate_bucket import (
    DEFAULT_POLICY,
    NO_CLOSURE,
    SLACK,
    Bucket,
    GateView,
    RatePolicy,
    Refusal,
    earliest_admission,
    refusal_reason,
)
from claykiln.actors.log import alert, get_logger
from claykiln.actors.mailbox import Mailbox, Reply

__all__ = [
    "DEFAULT_POLICY",
    "GATE_INBOX_SIZE",
    "NO_CLOSURE",
    "SLACK",
    "Bucket",
    "GateBoard",
    "GateView",
    "LoadRecord",
    "PersistRecord",
    "RatePolicy",
    "Refusal",
    "earliest_admission",
]

log = get_logger("claykiln.gate")

GATE_INBOX_SIZE = 4096
"""Bound of the gate's inbox; close/refusal notices beyond it are dropped and counted."""


class PersistRecord(Protocol):
    """Store ``record`` (msgpack-able) under ``key``; fire-and-forget, durable soon."""

    def __call__(self, key: str, record: dict[str, Any], /) -> None: ...


class LoadRecord(Protocol):
    """The record stored under ``key``, or None."""

    def __call__(self, key: str, /) -> dict[str, Any] | None: ...


@attrs.frozen(eq=False)
class _Reserve:
    key: str
    deadline: float | None
    reply: Reply[float]


@attrs.frozen
class _Close:
    key: str
    seconds: float
    reason: str


@attrs.frozen
class _Refused:
    key: str


@attrs.frozen(eq=False)
class _Reconfigure:
    policies: Mapping[str, RatePolicy]
    reply: Reply[None]


_Message = _Reserve | _Close | _Refused | _Reconfigure


def _rate_limited(key: str, retry_after: float, reason: str) -> RateLimitedRefusal:
    if reason == "closed":
        why = "is closed: the upstream asked us to back off (Retry-After)"
    else:
        why = "has no token in time"
    msg = f"gate {key!r} {why}; retry in {retry_after:.3f} s"
    # ``upstream`` carries the gate key too: deprecated, kept for clients that read it.
    details = {"gate": key, "upstream": key, "reason": reason}
    return RateLimitedRefusal(msg, retry_after=retry_after, details=details)


class GateBoard:
    """The rate gate for every upstream of the host. Start with ``await nursery.start(gate.run)``.

    ``acquire`` is the request path; ``close_until`` is fire-and-forget; ``views`` / ``stats`` read
    the published snapshot. The actor task is the only writer of pacing state.
    """

    def __init__(
        self,
        policies: Mapping[str, RatePolicy],
        *,
        persist: PersistRecord,
        load: LoadRecord,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._wall_clock = wall_clock
        self._mailbox: Mailbox[_Message] = Mailbox("gate", GATE_INBOX_SIZE)
        self._state = _GateState(dict(policies), persist, load, wall_clock)
        self._views: Mapping[str, GateView] = {}

    @property
    def dropped(self) -> int:
        """Notices dropped because the inbox was full."""
        return self._mailbox.dropped

    @property
    def views(self) -> Mapping[str, GateView]:
        """The latest snapshot, one view per upstream the gate knows."""
        return self._views

    async def acquire(self, key: str, deadline: float | None) -> None:
        """Return when the caller may call ``key`` (a token is its, the gate is open).

        Raises ``RateLimitedRefusal`` at once (without sleeping) when the token or the reopening
        lies past ``deadline`` (trio time; None waits as long as needed), with ``retry_after`` =
        seconds until then. Raises ``ActorStopped`` if the actor is not running. A caller
        cancelled while it sleeps towards its admission time wastes that token (conservative: it
        is never given to anyone else). An upstream without a policy is only subject to closures.
        """
        while True:
            now = trio.current_time()
            view = self._views.get(key)
            if view is not None:
                at = view.earliest(now)
                if at > now and deadline is not None and at > deadline:
                    # The snapshot can only be behind (earlier) -- the actor would refuse too.
                    self._mailbox.tell(_Refused(key))
                    raise _rate_limited(key, at - now, refusal_reason(view.closed_until, now))
                if view.policy is None:
                    if at <= now:
                        return  # an unpaced, open gate: nothing to wait for, no extra pass
                    await trio.sleep_until(at)
                    if not self._closed(key):
                        return
                    continue
            reply: Reply[float] = Reply()
            at = await self._mailbox.ask(_Reserve(key, deadline, reply), reply)
            await trio.sleep_until(at)
            # A closure that arrived after the reservation overrides it: reserve again.
            if not self._closed(key):
                return

    def check(self, key: str, deadline: float | None) -> None:
        """Refuse at once (no ask, no await) when the published snapshot already shows that the
        next admission lies past ``deadline``: the request path's fail-fast precheck."""
        if deadline is None:
            return
        view = self._views.get(key)
        if view is None:
            return
        now = trio.current_time()
        at = view.earliest(now)
        if at > deadline:
            self._mailbox.tell(_Refused(key))
            raise _rate_limited(key, at - now, refusal_reason(view.closed_until, now))

    def close_until(self, key: str, seconds: float, reason: str) -> None:
        """Close ``key`` for ``seconds`` (a Retry-After), fire-and-forget.

        Never shortens a closure; clamped to the policy's ``max_retry_after``; persisted as wall
        time. If the inbox is full the notice is dropped and counted in ``dropped`` (the request
        path never blocks on it).
        """
        self._mailbox.tell(_Close(key, seconds, reason))

    async def reconfigure(self, policies: Mapping[str, RatePolicy]) -> None:
        """Replace the policies; returns once applied. Buckets keep their level and closures."""
        reply: Reply[None] = Reply()
        await self._mailbox.ask(_Reconfigure(dict(policies), reply), reply)

    def stats(self) -> dict[str, Any]:
        """Plain values for the ``status`` RPC, read from the snapshot."""
        now, wall_now = trio.current_time(), self._wall_clock()
        return {
            "upstreams": {key: v.stats(now, wall_now) for key, v in self._views.items()},
            "dropped_notices": self.dropped,
        }

    def _closed(self, key: str) -> bool:
        view = self._views.get(key)
        return view is not None and view.closed_until - trio.current_time() > SLACK

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The actor loop: restore closures, publish, then serve until cancelled."""
        state = self._state
        batch: list[_Message] = []
        try:
            now = trio.current_time()
            for key in state.policies:
                state.bucket(key, now)
            self._views = {key: b.view(key, now) for key, b in state.buckets.items()}
            task_status.started()
            while True:
                batch = []
                with trio.move_on_at(state.next_opening()):
                    batch = await self._mailbox.drain()
                now = trio.current_time()
                changed = {state.handle(msg, now) for msg in batch}
                changed |= state.announce_openings(now)
                keys = state.buckets if None in changed else changed
                fresh = {key: state.buckets[key].view(key, now) for key in keys if key is not None}
                self._views = {**self._views, **fresh}
        finally:
            self._mailbox.stop(batch)


@attrs.define
class _GateState:
    """Everything the gate task owns; only that task touches it (no awaits here)."""

    policies: dict[str, RatePolicy]
    persist: PersistRecord
    load: LoadRecord
    wall_clock: Callable[[], float]
    buckets: dict[str, Bucket] = attrs.Factory(dict)

    def handle(self, msg: _Message, now: float) -> str | None:
        """Apply one message; the key whose view changed (None: every key)."""
        if isinstance(msg, _Reserve):
            decision = self.bucket(msg.key, now).reserve(now, msg.deadline)
            if isinstance(decision, Refusal):
                msg.reply.fail(_rate_limited(msg.key, decision.retry_after, decision.reason))
            else:
                msg.reply.set(decision)
        elif isinstance(msg, _Close):
            self.close(msg.key, msg.seconds, msg.reason, now, restored=False)
        elif isinstance(msg, _Refused):
            self.bucket(msg.key, now).limited += 1
        else:
            self.policies = dict(msg.policies)
            for key in self.policies:
                self.bucket(key, now)
            for key, bucket in self.buckets.items():
                bucket.set_policy(self.policies.get(key))
            msg.reply.set(None)
            return None
        return msg.key

    def bucket(self, key: str, now: float) -> Bucket:
        """The bucket for ``key``, created (its persisted closure restored) on first use."""
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(self.policies.get(key), now)
            record = self.load(key)
            if record is not None:
                try:
                    remaining = float(record["until"]) - self.wall_clock()
                    reason = str(record.get("reason", ""))
                except (KeyError, TypeError, ValueError, AttributeError):
                    log.warning(
                        "gate.bad_record", gate=key, upstream=key, record=repr(record)[:200]
                    )
                else:
                    self.close(key, remaining, reason, now, restored=True)
        return bucket

    def close(self, key: str, seconds: float, reason: str, now: float, *, restored: bool) -> None:
        """Close ``key`` for ``seconds`` (clamped); persist and alert if the closure grew."""
        bucket = self.bucket(key, now)
        seconds = min(seconds, (bucket.policy or DEFAULT_POLICY).max_retry_after)
        if not seconds > 0 or not bucket.close(now + seconds, reason):  # `not >`: NaN too
            return
        bucket.announced = True
        if not restored:
            try:
                self.persist(key, {"until": self.wall_clock() + seconds, "reason": reason})
            except Exception as exc:  # storage trouble must not stop the gate
                log.error("gate.persist_failed", gate=key, upstream=key, error=str(exc))
        alert(
            log,
            "gate.closed",
            severity="warning",
            gate=key,
            upstream=key,  # deprecated: the gate key, kept for consumers that read it
            retry_after=round(seconds, 3),
            reason=reason,
            restored=restored,
        )

    def next_opening(self) -> float:
        """The trio time the loop must wake to announce a reopening (inf if none)."""
        return min((b.closed_until for b in self.buckets.values() if b.announced), default=math.inf)

    def announce_openings(self, now: float) -> set[str | None]:
        """Log gate.opened for closures that have passed; the keys whose view changed."""
        opened: set[str | None] = set()
        for key, bucket in self.buckets.items():
            if bucket.announced and bucket.closed_until <= now:
                bucket.announced = False
                opened.add(key)
                alert(log, "gate.opened", severity="info", gate=key, upstream=key)
        return opened
