"""Rate gate: a token bucket per upstream plus a host-wide Retry-After closure.

Card
- owns: one ``Bucket`` per upstream (GCRA theoretical arrival time, closure end, counters, the
  admission times still ahead); the persisted closure records (through ``persist``).
- receives: ``_Reserve`` (ask: a token within a deadline), ``_Close`` (fire-and-forget: a 429/503
  Retry-After), ``_Refused`` (fire-and-forget: a fast-path rejection to count), ``_Reconfigure``
  (ask).
- replies: ``_Reserve`` -> the trio time at which the caller's token becomes available (the caller
  sleeps until then; the actor never sleeps on a caller's behalf), or ``RateLimited``.
- sends to: nobody; ``persist(key, record)`` stores a closure as wall-clock time.
- publishes: ``GateBoard.views``, a ``Mapping[str, GateView]`` replaced wholesale after every batch;
  ``acquire`` answers unlimited upstreams and certain rejections from it without an ask.
- on cancellation / on failure: the inbox closes, every queued or unanswered ask fails with
  ``ActorStopped`` and later asks raise it at once.

Pacing is GCRA (virtual scheduling): with interval T = 1/per_second and tolerance
tau = (burst - 1) * T, a reservation at ``now`` is admitted at max(now, tat - tau, closed_until)
and moves ``tat`` to max(admitted, tat) + T. Admission times only grow, so waiters are served FIFO.
A closure bumps ``tat`` to closed_until + tau: when the gate reopens the bucket holds one token and
refills at the policy rate (no burst of ``burst`` calls into an upstream that just said 429).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import structlog
import trio

from claykiln.actors.errors import RateLimited
from claykiln.actors.mailbox import ActorStopped, Reply, drain, fail_pending

__all__ = [
    "GATE_INBOX_SIZE",
    "Bucket",
    "GateBoard",
    "GateView",
    "LoadRecord",
    "PersistRecord",
    "RatePolicy",
    "Refusal",
    "earliest_admission",
]

# structlog.get_logger(logger=...) is a TypeError (wrap_logger has its own `logger` argument):
# this is the proxy it builds, with the name bound, as claykiln.daemon.logs.get_logger does.
log = structlog._config.BoundLoggerLazyProxy(None, initial_values={"logger": "claykiln.gate"})

GATE_INBOX_SIZE = 4096
"""Bound of the gate's inbox; close/refusal notices beyond it are dropped and counted."""

NO_CLOSURE = -math.inf
SLACK = 1e-9
"""Admission times within SLACK of now count as now (float rounding of summed intervals)."""


@attrs.frozen
class RatePolicy:
    """Token bucket per upstream; ``per_second`` refill, ``burst`` capacity."""

    per_second: float = attrs.field(default=10.0, validator=attrs.validators.gt(0.0))
    burst: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    max_retry_after: float = attrs.field(default=600.0, validator=attrs.validators.gt(0.0))
    # Arrival jitter allowance: the upstream's bucket starts counting at the first *arrival*,
    # which can lag its admission (a cold connection: ~60 ms measured). Pacing exactly at the
    # upstream's limit then overshoots by a token; keeping `margin` seconds of tokens in hand
    # (1.5 calls at 10/s) never does.
    margin: float = attrs.field(default=0.15, validator=attrs.validators.ge(0.0))

    @property
    def interval(self) -> float:
        """Seconds between two tokens."""
        return 1.0 / self.per_second

    @property
    def tolerance(self) -> float:
        """GCRA tolerance: how far ahead of ``tat`` a call may go (burst - 1 intervals, less
        the arrival-jitter margin)."""
        return max(0.0, (self.burst - 1) * self.interval - self.margin)


DEFAULT_POLICY = RatePolicy()


class PersistRecord(Protocol):
    """Store ``record`` (msgpack-able) under ``key``; fire-and-forget, durable soon."""

    def __call__(self, key: str, record: dict[str, Any], /) -> None: ...


class LoadRecord(Protocol):
    """The record stored under ``key``, or None."""

    def __call__(self, key: str, /) -> dict[str, Any] | None: ...


def earliest_admission(
    now: float, tat: float, closed_until: float, policy: RatePolicy | None
) -> float:
    """When a reservation made at ``now`` would be admitted (no policy: only the closure binds)."""
    at = max(now, closed_until)
    if policy is not None:
        at = max(at, tat - policy.tolerance)
    return now if at - now <= SLACK else at


@attrs.frozen
class Refusal:
    """A reservation the deadline cannot wait for."""

    retry_after: float
    reason: str  # "closed" | "paced"


class Bucket:
    """One upstream's pacing state. Pure: no awaits, time comes in as ``now``."""

    def __init__(self, policy: RatePolicy | None, now: float) -> None:
        self.policy = policy
        self.tat = now  # a full bucket
        self.closed_until = NO_CLOSURE
        self.reason = ""
        self.announced = False  # gate.closed logged, gate.opened not yet
        self.pending: deque[float] = deque()  # admission times handed out, ascending
        self.admitted = 0
        self.limited = 0

    def reserve(self, now: float, deadline: float | None) -> float | Refusal:
        """Hand out the next admission time, or refuse if it lies past ``deadline``."""
        at = earliest_admission(now, self.tat, self.closed_until, self.policy)
        if at > now and deadline is not None and at > deadline:
            self.limited += 1
            return Refusal(retry_after=at - now, reason=_reason(self.closed_until, now))
        if self.policy is not None:
            self.tat = max(at, self.tat) + self.policy.interval
        self.admitted += 1
        if at > now:
            self.pending.append(at)
        return at

    def set_policy(self, policy: RatePolicy | None) -> None:
        """Change the policy, keeping the level; a closure still reopens with one token."""
        self.policy = policy
        if policy is not None:
            self.tat = max(self.tat, self.closed_until + policy.tolerance)

    def close(self, until: float, reason: str) -> bool:
        """Close until ``until`` unless already closed at least that long; True if it changed."""
        if until <= self.closed_until:
            return False
        self.closed_until = until
        self.reason = reason
        if self.policy is not None:
            # One token at reopening, then the policy rate.
            self.tat = max(self.tat, until + self.policy.tolerance)
        return True

    def view(self, key: str, now: float) -> GateView:
        """An immutable copy for the snapshot (admission times already passed are dropped)."""
        while self.pending and self.pending[0] <= now:
            self.pending.popleft()
        return GateView(
            key=key,
            policy=self.policy,
            tat=self.tat,
            closed_until=self.closed_until,
            reason=self.reason,
            pending=tuple(self.pending),
            admitted=self.admitted,
            limited=self.limited,
        )


@attrs.frozen
class GateView:
    """One upstream as published to the request path; times are trio times."""

    key: str
    policy: RatePolicy | None
    tat: float
    closed_until: float
    reason: str
    pending: tuple[float, ...]
    admitted: int
    limited: int

    def earliest(self, now: float) -> float:
        """The earliest admission a new reservation could get (the actor may give a later one)."""
        return earliest_admission(now, self.tat, self.closed_until, self.policy)

    def tokens(self, now: float) -> float | None:
        """Estimated tokens available at ``now``; None when unlimited."""
        if self.policy is None:
            return None
        if now < self.closed_until:
            return 0.0
        level = (now - self.tat) / self.policy.interval + self.policy.burst
        return max(0.0, min(float(self.policy.burst), level))

    def waiting(self, now: float) -> int:
        """Callers holding an admission time still ahead of ``now``."""
        return len(self.pending) - bisect.bisect_right(self.pending, now)

    def stats(self, now: float, wall_now: float) -> dict[str, Any]:
        """Plain msgpack-able values for the ``status`` RPC."""
        closed = self.closed_until > now
        tokens = self.tokens(now)
        return {
            "paced": self.policy is not None,
            "per_second": None if self.policy is None else self.policy.per_second,
            "burst": None if self.policy is None else self.policy.burst,
            "closed": closed,
            "closed_for": round(self.closed_until - now, 3) if closed else 0.0,
            "closed_until_wall": wall_now + (self.closed_until - now) if closed else None,
            "reason": self.reason if closed else None,
            "tokens": None if tokens is None else round(tokens, 3),
            "waiting": self.waiting(now),
            "admitted": self.admitted,
            "limited": self.limited,
        }


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


def _reason(closed_until: float, now: float) -> str:
    return "closed" if closed_until - now > SLACK else "paced"


def _rate_limited(key: str, retry_after: float, reason: str) -> RateLimited:
    why = "asked us to back off (Retry-After)" if reason == "closed" else "has no token in time"
    msg = f"upstream {key!r} {why}; retry in {retry_after:.3f} s"
    return RateLimited(msg, retry_after=retry_after, details={"upstream": key, "reason": reason})


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
        self._policies = dict(policies)  # read by run() at start only
        self._persist = persist
        self._load = load
        self._wall_clock = wall_clock
        self._send, self._receive = trio.open_memory_channel[_Message](GATE_INBOX_SIZE)
        self._views: Mapping[str, GateView] = {}
        self.dropped = 0  # notices dropped because the inbox was full (written by senders only)

    @property
    def views(self) -> Mapping[str, GateView]:
        """The latest snapshot, one view per upstream the gate knows."""
        return self._views

    async def acquire(self, key: str, deadline: float | None) -> None:
        """Return when the caller may call ``key`` (a token is its, the gate is open).

        Raises ``RateLimited`` at once (without sleeping) when the token or the reopening lies
        past ``deadline`` (trio time; None waits as long as needed), with ``retry_after`` = seconds
        until then. Raises ``ActorStopped`` if the actor is not running. A caller cancelled while
        it sleeps towards its admission time wastes that token (conservative: it is never given
        to anyone else). An upstream without a policy is only subject to closures.
        """
        while True:
            now = trio.current_time()
            view = self._views.get(key)
            if view is not None:
                at = view.earliest(now)
                if at > now and deadline is not None and at > deadline:
                    # The snapshot can only be behind (earlier) -- the actor would refuse too.
                    self._notify(_Refused(key))
                    raise _rate_limited(key, at - now, _reason(view.closed_until, now))
                if view.policy is None:
                    await trio.sleep_until(at)
                    if not self._closed(key):
                        return
                    continue
            reply: Reply[float] = Reply()
            await self._ask(_Reserve(key, deadline, reply))
            at = await reply.wait()
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
            self._notify(_Refused(key))
            raise _rate_limited(key, at - now, _reason(view.closed_until, now))

    def close_until(self, key: str, seconds: float, reason: str) -> None:
        """Close ``key`` for ``seconds`` (a Retry-After), fire-and-forget.

        Never shortens a closure; clamped to the policy's ``max_retry_after``; persisted as wall
        time. If the inbox is full the notice is dropped and counted in ``dropped`` (the request
        path never blocks on it).
        """
        self._notify(_Close(key, seconds, reason))

    async def reconfigure(self, policies: Mapping[str, RatePolicy]) -> None:
        """Replace the policies; returns once applied. Buckets keep their level and closures."""
        reply: Reply[None] = Reply()
        await self._ask(_Reconfigure(dict(policies), reply))
        await reply.wait()

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

    def _notify(self, message: _Message) -> None:
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += 1  # counted, not logged: a storm of drops must not flood the log
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _ask(self, message: _Reserve | _Reconfigure) -> None:
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            msg = "the gate actor is not running"
            raise ActorStopped(msg) from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The actor loop: restore closures, publish, then serve until cancelled."""
        state = _GateState(self._policies, self._persist, self._load, self._wall_clock)
        now = trio.current_time()
        for key in self._policies:
            state.bucket(key, now)
        self._views = {key: b.view(key, now) for key, b in state.buckets.items()}
        task_status.started()
        batch: list[_Message] = []
        try:
            while True:
                batch = []
                with trio.move_on_at(state.next_opening()):
                    batch = await drain(self._receive)
                now = trio.current_time()
                changed = {state.handle(msg, now) for msg in batch}
                changed |= state.announce_openings(now)
                keys = state.buckets if None in changed else changed
                fresh = {key: state.buckets[key].view(key, now) for key in keys if key is not None}
                self._views = {**self._views, **fresh}
        finally:
            self._stop(batch)

    def _stop(self, batch: list[_Message]) -> None:
        """Fail every ask left unanswered, then close the inbox so later asks fail at once."""
        leftover = list(batch)
        while True:
            try:
                leftover.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._receive.close()
        replies: list[Reply[Any]] = [
            m.reply for m in leftover if isinstance(m, _Reserve | _Reconfigure)
        ]
        fail_pending(replies, "gate")


class _GateState:
    """Everything the gate task owns; only that task touches it (no awaits here)."""

    def __init__(
        self,
        policies: Mapping[str, RatePolicy],
        persist: PersistRecord,
        load: LoadRecord,
        wall_clock: Callable[[], float],
    ) -> None:
        self.policies = dict(policies)
        self.buckets: dict[str, Bucket] = {}
        self._persist, self._load, self._wall_clock = persist, load, wall_clock

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
            record = self._load(key)
            if record is not None:
                try:
                    remaining = float(record["until"]) - self._wall_clock()
                    reason = str(record.get("reason", ""))
                except (KeyError, TypeError, ValueError, AttributeError):
                    log.warning("gate.bad_record", upstream=key, record=repr(record)[:200])
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
                self._persist(key, {"until": self._wall_clock() + seconds, "reason": reason})
            except Exception as exc:  # storage trouble must not stop the gate
                log.error("gate.persist_failed", upstream=key, error=str(exc))
        log.warning(
            "gate.closed",
            alert=True,
            severity="warning",
            upstream=key,
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
                log.info("gate.opened", alert=True, severity="info", upstream=key)
        return opened
