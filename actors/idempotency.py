"""The idempotency store actor: one record per key, coalescing, in-doubt keys, the sweeper.

Card
- owns: the flights (key -> the call running under it in this process, with the callers
  waiting for its answer) and the sweeper's schedule. Records live in storage (tables in
  actors/idempotency_record.py); only this actor and the callers it made leaders write them,
  always through the storage writer. Reads are inline (``lookup``), from any task.
- receives: ``Begin`` (ask: lead, follow or replay), ``Finish`` (the leader's end: wakes the
  followers, drops the flight), ``Forget`` (ask, admin).
- replies: to ``Begin`` a ``Lead`` (run the call, then ``finish`` exactly once), a ``Follow``
  (a slot that gets the leader's answer) or a ``Replay`` (the completed record), or fails it with
  ``idempotency_mismatch`` / ``idempotency_in_doubt``; to ``Forget`` whether a record was
  deleted (a key in flight is refused with ``idempotency_in_flight``).
- sends to: the storage writer (the start-up conversion and the sweeper's deletions, awaited;
  the leaders write their own intents and outcomes); structlog events idempotency.in_doubt
  (alert, at start), idempotency.mismatch (alert), idempotency.swept, idempotency.forgotten.
- at start (before ``task_status.started``): every record found in flight (the in-flight index,
  never a scan of the records) was left by an earlier boot; it becomes ``in_doubt``, durably.
- the sweeper: every ``sweep_interval`` seconds it deletes up to ``sweep_batch`` expired records
  in one write, in expiry order (the expiry index), skipping keys in flight; a full batch is
  followed by the next one after a checkpoint, so asks are served between batches.
- on cancellation: the inbox closes; asks still queued fail with ``ActorStopped``; followers
  still waiting get ``ActorStopped`` too (their call's answer will not come through here).
- on failure: a sweep whose write fails is logged (idempotency.sweep_failed) and retried at the
  next interval; a malformed record reads as absent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from claykiln.actors.errors import IdempotencyInFlightRefusal, Refusal
from claykiln.actors.idempotency_record import (
    EXPIRY_TABLE,
    INFLIGHT_TABLE,
    RECORD_TABLE,
    BeginDecision,
    IdempotencyRecord,
    RecordState,
    decide_begin,
    intent_ops,
    mismatch_refusal,
    record_ops,
    removal_ops,
    split_expiry_key,
    storage_key,
)
from claykiln.actors.log import alert, get_logger
from claykiln.actors.mailbox import ActorStopped, Mailbox, Reply, fail_pending
from claykiln.actors.writer import Writer
from claykiln.storage import Delete, Op, StorageError, Store

__all__ = [
    "IDEMPOTENCY_INBOX",
    "SWEEP_BATCH",
    "SWEEP_INTERVAL",
    "Follow",
    "IdempotencyStore",
    "Lead",
    "Replay",
]

IDEMPOTENCY_INBOX: Final = 4096
SWEEP_INTERVAL: Final = 1.0
SWEEP_BATCH: Final = 256
IN_DOUBT_SAMPLE: Final = 20  # keys named in the start-up alert (the count is exact)

log = get_logger("claykiln.idempotency")

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


@attrs.frozen(eq=False)
class _Begin:
    key: str
    fingerprint: str
    repeatable: bool
    deadline: float | None
    reply: Reply[Started]


@attrs.frozen(eq=False)
class _Finish:
    key: str
    answer: FlightAnswer
    intent_kept: bool


@attrs.frozen(eq=False)
class _Forget:
    key: str
    reply: Reply[bool]


_Message = _Begin | _Finish | _Forget


@attrs.define
class _Flight:
    fingerprint: str
    deadline: float | None
    followers: list[Reply[dict[str, Any]]] = attrs.Factory(list)


@attrs.define
class _IdempotencyState:
    """Touched only by the actor task."""

    flights: dict[str, _Flight] = attrs.Factory(dict)
    # Keys whose leader could not write its outcome: the intent is still in flight in storage,
    # so the key is in doubt (rare: storage full or failing).
    stale_intents: set[str] = attrs.Factory(set)
    next_sweep: float = 0.0
    begun: int = 0
    led: int = 0
    followed: int = 0
    replayed: int = 0
    mismatched: int = 0
    refused_in_doubt: int = 0
    swept: int = 0
    sweeps: int = 0
    in_doubt_at_start: int = 0


class IdempotencyStore:
    """The daemon's idempotency records behind one actor; see the module card."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        *,
        wall_clock: Callable[[], float] = time.time,
        sweep_interval: float = SWEEP_INTERVAL,
        sweep_batch: int = SWEEP_BATCH,
    ) -> None:
        self._store = store
        self._writer = writer
        self._wall_clock = wall_clock
        self._sweep_interval = sweep_interval
        self._sweep_batch = sweep_batch
        self._mailbox: Mailbox[_Message] = Mailbox("idempotency", IDEMPOTENCY_INBOX)
        self._state = _IdempotencyState()
        self._started = False
        self.precheck_replays = 0  # replays answered on the connection reader (any task adds)

    @property
    def boot(self) -> int:
        """This process's boot count (records name the boot that started them)."""
        return self._store.meta.boot_count

    def now(self) -> float:
        """Wall-clock seconds, as records store them."""
        return self._wall_clock()

    # -- request path (any task) ---------------------------------------------------------
    def stored_value(self, key: str) -> Any:
        """The stored map of ``key`` as it is in storage (None if absent), read inline."""
        return self._store.get(RECORD_TABLE, storage_key(key))

    def lookup(self, key: str) -> IdempotencyRecord | None:
        """The stored record of ``key`` (completed or in doubt, expired ones included), read
        inline; None if absent."""
        return self._read(RECORD_TABLE, key)

    def lookup_current(self, key: str) -> IdempotencyRecord | None:
        """What is known of ``key`` now: the intent of a call in flight (or left in flight),
        else its record (what ``idempotency.get`` shows)."""
        return self._read(INFLIGHT_TABLE, key) or self._read(RECORD_TABLE, key)

    def _read(self, table: str, key: str) -> IdempotencyRecord | None:
        value = self._store.get(table, storage_key(key))
        if value is None:
            return None
        record = IdempotencyRecord.from_value(key, value)
        if record is None:
            log.warning("idempotency.malformed_record", key=key, table=table)
        return record

    async def begin(
        self, key: str, fingerprint: str, *, repeatable: bool, deadline: float | None
    ) -> Started:
        """Lead, follow or replay the call under ``key``.

        Raises ``IdempotencyMismatchRefusal`` (another fingerprint, stored or running),
        ``IdempotencyInDoubtRefusal`` (in doubt, not ``repeatable``), ``ActorStopped``.
        A ``Lead`` obliges the caller to ``finish(key, ...)`` exactly once, also when
        cancelled (the flight would hold its followers until their deadlines otherwise).
        """
        reply: Reply[Started] = Reply()
        try:
            return await self._mailbox.ask(
                _Begin(key, fingerprint, repeatable, deadline, reply), reply
            )
        except trio.Cancelled:
            if not reply.done:
                reply.fail(ActorStopped("the asker gave up"))
            else:
                await self._release_unwanted(key, reply)
            raise

    async def _release_unwanted(self, key: str, reply: Reply[Started]) -> None:
        """A ``Lead`` granted to an asker that was cancelled meanwhile: end the flight."""
        try:
            started = reply.result()
        except Exception:
            return
        if isinstance(started, Lead):
            msg = "the first caller with this key went away before its call started"
            with trio.CancelScope(shield=True):
                await self.finish(key, IdempotencyInFlightRefusal(msg, retry_after=0.0))

    async def finish(self, key: str, answer: FlightAnswer, *, intent_kept: bool = False) -> None:
        """The leader's end, once its outcome is durable: followers get ``answer`` and the flight
        ends. ``intent_kept``: the outcome could not be written, so the intent stays in flight
        and the key is in doubt from now on. Waits for room in the inbox only when it is full
        (call it shielded when cancelled); a stopped actor has no followers left to tell."""
        message = _Finish(key, answer, intent_kept)
        try:
            self._mailbox.post_nowait(message)
        except trio.WouldBlock:
            with contextlib.suppress(ActorStopped):
                await self._mailbox.post(message)
        except ActorStopped:
            pass

    async def save_intent(self, intent: IdempotencyRecord) -> None:
        """Write the intent of a call about to run, durably, from the caller's task (through
        the storage writer). Raises what ``Writer.write`` raises (StoreFull, StorageError)."""
        await self._writer.write(intent_ops(intent))

    async def save(
        self, record: IdempotencyRecord, *, previous_expiry: float | None = None
    ) -> None:
        """Write a completed or in-doubt ``record`` in place of its intent, durably
        (``previous_expiry``: the expiry of the record it replaces). Raises as ``save_intent``."""
        await self._writer.write(record_ops(record, previous_expiry=previous_expiry))

    async def end_intent(self, intent: IdempotencyRecord) -> None:
        """Delete the intent of a call that failed before it could matter (a retry runs again);
        a record it was re-running stays as it was. Raises as ``save_intent``."""
        await self._writer.write([Delete(INFLIGHT_TABLE, storage_key(intent.key))])

    async def forget(self, key: str) -> bool:
        """Delete the record of ``key`` durably (admin); False if there was none. Raises
        ``IdempotencyInFlightRefusal`` while a call with the key runs."""
        reply: Reply[bool] = Reply()
        return await self._mailbox.ask(_Forget(key, reply), reply)

    def stats(self) -> dict[str, Any]:
        """For ``status``: records stored, flights, followers and the counters since start."""
        s = self._state
        return {
            "records": self._store.count(RECORD_TABLE),
            "in_flight": len(s.flights),
            "waiting": sum(len(f.followers) for f in s.flights.values()),
            "begun": s.begun,
            "led": s.led,
            "coalesced": s.followed,
            "replayed": s.replayed + self.precheck_replays,
            "mismatched": s.mismatched,
            "refused_in_doubt": s.refused_in_doubt,
            "in_doubt_at_start": s.in_doubt_at_start,
            "swept": s.swept,
            "sweeps": s.sweeps,
            "running": self._started and not self._mailbox.stopped,
        }

    def note_refusal(self, error: Refusal) -> None:
        """Count a mismatch or in-doubt refusal made on the reader (precheck), log a mismatch."""
        if error.code == "idempotency_mismatch":
            self._state.mismatched += 1
            _log_mismatch(error)
        elif error.code == "idempotency_in_doubt":
            self._state.refused_in_doubt += 1

    # -- the actor -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Turn records left in flight into ``in_doubt`` (durably), then serve until cancelled."""
        if self._started:
            msg = "IdempotencyStore.run was already started; make a new one to restart"
            raise RuntimeError(msg)
        self._started = True
        await self._convert_in_flight()
        self._state.next_sweep = trio.current_time() + self._sweep_interval
        task_status.started()
        batch: list[_Message] = []
        try:
            while True:
                batch = []
                with trio.move_on_at(self._state.next_sweep):
                    batch = await self._mailbox.drain()
                for message in batch:
                    await self._handle(message)
                if trio.current_time() >= self._state.next_sweep:
                    full = await self._sweep()
                    delay = 0.0 if full else self._sweep_interval
                    self._state.next_sweep = trio.current_time() + delay
        finally:
            self._mailbox.stop(batch)
            followers = [f for flight in self._state.flights.values() for f in flight.followers]
            fail_pending(followers, "idempotency")

    async def _handle(self, message: _Message) -> None:
        if isinstance(message, _Begin):
            self._begin(message)
        elif isinstance(message, _Finish):
            if message.intent_kept:
                self._state.stale_intents.add(message.key)
            else:
                self._state.stale_intents.discard(message.key)
            flight = self._state.flights.pop(message.key, None)
            if flight is not None:
                for follower in flight.followers:
                    _answer(follower, message.answer)
        else:
            await self._forget(message)

    def _begin(self, message: _Begin) -> None:
        state = self._state
        state.begun += 1
        if message.reply.done:
            return  # the asker gave up
        flight = state.flights.get(message.key)
        try:
            if flight is not None:
                if flight.fingerprint != message.fingerprint:
                    raise mismatch_refusal(message.key, flight.fingerprint, message.fingerprint)
                answer: Reply[dict[str, Any]] = Reply()
                flight.followers.append(answer)
                state.followed += 1
                message.reply.set(Follow(answer, flight.deadline))
                return
            record = None
            if message.key in state.stale_intents:
                record = self._read(INFLIGHT_TABLE, message.key)
            record = record or self.lookup(message.key)
            decision = decide_begin(
                record, message.fingerprint, repeatable=message.repeatable, now=self.now()
            )
        except Refusal as refusal:
            self.note_refusal(refusal)
            message.reply.fail(refusal)
            return
        if decision is BeginDecision.REPLAY:
            assert record is not None
            state.replayed += 1
            message.reply.set(Replay(record))
            return
        state.flights[message.key] = _Flight(message.fingerprint, message.deadline)
        state.led += 1
        message.reply.set(Lead(record))

    async def _forget(self, message: _Forget) -> None:
        if message.reply.done:
            return
        if message.key in self._state.flights:
            msg = f"idempotency key {message.key!r} is in flight; forget it once its call ended"
            message.reply.fail(IdempotencyInFlightRefusal(msg, retry_after=1.0))
            return
        skey = storage_key(message.key)
        known = [self._store.get(t, skey) is not None for t in (RECORD_TABLE, INFLIGHT_TABLE)]
        if not any(known):
            message.reply.set(False)
            return
        record = self.lookup(message.key)
        expires = record.expires_at if record is not None else None
        try:
            await self._writer.write(removal_ops(message.key, expires, intent=True))
        except StorageError as exc:
            message.reply.fail(exc)
            return
        self._state.stale_intents.discard(message.key)
        log.info("idempotency.forgotten", key=message.key)
        message.reply.set(True)

    async def _convert_in_flight(self) -> None:
        """Start-up: intents left in flight by an earlier boot become in-doubt records (one
        write); each replaces the record its call was re-running, if any."""
        entries = self._store.items(INFLIGHT_TABLE)
        if not entries:
            return
        ops: list[Op] = []
        keys: list[str] = []
        for raw_key, value in entries:
            key = raw_key.decode("ascii", "replace")
            intent = IdempotencyRecord.from_value(key, value)
            if intent is None:
                log.warning("idempotency.malformed_record", key=key, table=INFLIGHT_TABLE)
                ops.append(Delete(INFLIGHT_TABLE, raw_key))
                continue
            old = self.lookup(key)
            doubt = f"the daemon stopped (boot {intent.boot}) before the answer was stored"
            record = attrs.evolve(intent, state=RecordState.IN_DOUBT, doubt=doubt)
            ops.extend(record_ops(record, previous_expiry=old.expires_at if old else None))
            keys.append(key)
        await self._writer.write(ops)
        self._state.in_doubt_at_start = len(keys)
        if keys:
            alert(
                log,
                "idempotency.in_doubt",
                severity="warning",
                count=len(keys),
                keys=keys[:IN_DOUBT_SAMPLE],
                boot=self.boot,
            )

    async def _sweep(self) -> bool:
        """Delete up to one batch of expired records; True if the batch was full."""
        now_us = int(self.now() * 1_000_000)
        entries = self._store.items(EXPIRY_TABLE, limit=self._sweep_batch)
        ops: list[Op] = []
        removed = 0
        for raw, _ in entries:
            expires_us, key = split_expiry_key(raw)
            if expires_us > now_us:
                break
            if key in self._state.flights:
                continue
            record = self.lookup(key)
            if record is not None and int(record.expires_at * 1_000_000) == expires_us:
                ops.extend(removal_ops(key, None))
                removed += 1
            ops.append(Delete(EXPIRY_TABLE, raw))
        if not ops:
            return False
        self._state.sweeps += 1
        try:
            await self._writer.write(ops)
        except StorageError as exc:
            log.warning("idempotency.sweep_failed", error=str(exc))
            return False
        self._state.swept += removed
        log.debug("idempotency.swept", records=removed, entries=len(ops))
        return len(entries) >= self._sweep_batch


def _answer(follower: Reply[dict[str, Any]], answer: FlightAnswer) -> None:
    if isinstance(answer, Refusal):
        copy = type(answer)(answer.message, retry_after=answer.retry_after)
        copy.details = dict(answer.details or {}) or None
        follower.fail(copy)
    else:
        follower.set(answer)


def _log_mismatch(error: Refusal) -> None:
    details = error.details or {}
    alert(
        log,
        "idempotency.mismatch",
        severity="warning",
        key=details.get("key"),
        fingerprint=details.get("fingerprint"),
        request_fingerprint=details.get("request_fingerprint"),
    )
