"""The calls running under idempotency keys in this process: who leads, who follows.

Sans-I/O: no awaits, no storage, no clock. ``Flights`` is the table of keys whose call runs now
(its leader's fingerprint and deadline, the followers waiting for its answer). The idempotency
store (actors/idempotency.py) owns one and touches it on the trio thread only:

- ``claim(key, fp, record, ...)``: lead, follow or replay, decided from the flights and the key's
  stored ``record`` (read by the caller in the same synchronous step, so nothing can change in
  between): a running call with the key is followed (``Follow``, its answer slot) or refused as
  a mismatch; else ``decide_begin`` rules (actors/idempotency_record.py): ``Replay`` of a
  completed record, ``Lead`` (the caller must ``release`` the key exactly once), or a refusal.
- ``release(key, answer, intent_kept)``: the leader's end; every follower gets ``answer`` (a
  refusal as a fresh copy each: one exception object is never raised in two tasks).
- ``stale_intents``: keys whose leader could not write its outcome (storage full or failing):
  their intent stays in flight in storage, so the key is in doubt from then on.
"""

from __future__ import annotations

from typing import Any

import attrs

from claykiln.actors.errors import Refusal
from claykiln.actors.idempotency_record import (
    BeginDecision,
    IdempotencyRecord,
    decide_begin,
    mismatch_refusal,
)
from claykiln.actors.mailbox import Reply, fail_pending

__all__ = ["FlightAnswer", "Flights", "Follow", "Lead", "Replay", "Started"]

FlightAnswer = dict[str, Any] | Refusal
"""What followers get: the leader's wire result, or the refusal it ended with."""


@attrs.frozen
class Lead:
    """Run the call; ``previous`` is the record it replaces (an expired or in-doubt one)."""

    previous: IdempotencyRecord | None


@attrs.frozen(eq=False)
class Follow:
    """The same call is running: ``answer`` gets its end; ``leader_deadline`` (trio time, None:
    only its timeout class) says how long it may take."""

    answer: Reply[dict[str, Any]]
    leader_deadline: float | None


@attrs.frozen
class Replay:
    record: IdempotencyRecord


Started = Lead | Follow | Replay


@attrs.define
class _Flight:
    fingerprint: str
    deadline: float | None
    followers: list[Reply[dict[str, Any]]] = attrs.Factory(list)


@attrs.define
class FlightCounts:
    """What ``claim`` decided since start (``status`` shows them)."""

    begun: int = 0
    led: int = 0
    followed: int = 0
    replayed: int = 0


class Flights:
    """The keys whose call runs in this process; see the module docstring."""

    def __init__(self) -> None:
        self._running: dict[str, _Flight] = {}
        self.stale_intents: set[str] = set()
        self.counts = FlightCounts()

    def __contains__(self, key: object) -> bool:
        return key in self._running

    def __len__(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Followers waiting for a leader's answer."""
        return sum(len(f.followers) for f in self._running.values())

    def claim(
        self,
        key: str,
        fingerprint: str,
        record: IdempotencyRecord | None,
        *,
        repeatable: bool,
        deadline: float | None,
        now: float,
    ) -> Started:
        """Lead, follow or replay (see the module docstring). Raises
        ``IdempotencyMismatchRefusal`` and ``IdempotencyInDoubtRefusal``."""
        counts = self.counts
        counts.begun += 1
        flight = self._running.get(key)
        if flight is not None:
            if flight.fingerprint != fingerprint:
                raise mismatch_refusal(key, flight.fingerprint, fingerprint)
            answer: Reply[dict[str, Any]] = Reply()
            flight.followers.append(answer)
            counts.followed += 1
            return Follow(answer, flight.deadline)
        decision = decide_begin(record, fingerprint, repeatable=repeatable, now=now)
        if decision is BeginDecision.REPLAY:
            assert record is not None
            counts.replayed += 1
            return Replay(record)
        self._running[key] = _Flight(fingerprint, deadline)
        counts.led += 1
        return Lead(record)

    def release(self, key: str, answer: FlightAnswer, *, intent_kept: bool) -> None:
        """End the flight of ``key``: its followers get ``answer``. ``intent_kept``: the outcome
        could not be written, so the key is in doubt from now on."""
        if intent_kept:
            self.stale_intents.add(key)
        else:
            self.stale_intents.discard(key)
        flight = self._running.pop(key, None)
        if flight is None:
            return
        for follower in flight.followers:
            if isinstance(answer, Refusal):
                copy = type(answer)(answer.message, retry_after=answer.retry_after)
                copy.details = dict(answer.details or {}) or None
                follower.fail(copy)
            else:
                follower.set(answer)

    def fail_all(self, name: str) -> None:
        """The store stopped: every follower still waiting gets ``ActorStopped``."""
        fail_pending((f for fl in self._running.values() for f in fl.followers), name)
