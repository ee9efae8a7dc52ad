"""The idempotency store actor: one record per key, the calls running under a key, the sweeper.

Card
- owns: the flights (``Flights``, actors/idempotency_flights.py: key -> the call running under
  it in this process, with the callers waiting for its answer) and the sweeper's schedule.
  Records live in storage (tables in actors/idempotency_record.py); only this actor and the
  callers it made leaders write them, always through the storage writer. Reads are inline
  (``lookup``, ``stored_value``), from any task.
- claims without a message: ``claim`` (lead, follow or replay) and ``release`` (the leader's
  end: wakes the followers, drops the flight) are plain calls on the trio thread, decided by
  ``Flights`` over the key's record read in the same step, so a keyed call's precheck claims
  its key on the connection reader (no ask, no task switch). ``begin`` / ``finish`` are the
  same for a task.
- receives: ``Forget`` (ask, admin): whether a record was deleted (a key in flight is refused
  with ``idempotency_in_flight``).
- sends to: the storage writer (the start-up conversion and the sweeper's deletions, awaited:
  actors/idempotency_upkeep.py; the leaders write their own intents and outcomes); structlog
  events idempotency.in_doubt (alert, at start), idempotency.mismatch (alert),
  idempotency.swept, idempotency.forgotten.
- at start (before ``task_status.started``; claims are refused until then): every record found
  in flight was left by an earlier boot; it becomes ``in_doubt``, durably.
- the sweeper: every ``sweep_interval`` seconds it deletes up to ``sweep_batch`` expired records
  in one write, in expiry order, skipping keys in flight; a full batch is followed by the next
  one after a checkpoint, so asks are served between batches.
- on cancellation: claims and asks fail with ``ActorStopped``; followers still waiting get
  ``ActorStopped`` too (their call's answer will not come through here).
- on failure: a sweep whose write fails is logged (idempotency.sweep_failed) and retried at the
  next interval; a malformed record reads as absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from claykiln.actors.errors import IdempotencyInFlightRefusal, Refusal
from claykiln.actors.idempotency_flights import (
    FlightAnswer,
    Flights,
    Follow,
    Lead,
    Replay,
    Started,
)
from claykiln.actors.idempotency_record import (
    COMPLETED,
    INFLIGHT_TABLE,
    RECORD_TABLE,
    IdempotencyRecord,
    intent_ops,
    record_ops,
    removal_ops,
    replay_body,
    storage_key,
)
from claykiln.actors.idempotency_upkeep import (
    convert_in_flight,
    decode_record,
    read_record,
    sweep_once,
)
from claykiln.actors.log import alert, get_logger
from claykiln.actors.mailbox import ActorStopped, Mailbox, Reply
from claykiln.actors.writer import Writer
from claykiln.storage import Delete, StorageError, Store

__all__ = [
    "IDEMPOTENCY_INBOX",
    "REPLAY_CACHE_BYTES",
    "REPLAY_CACHE_ENTRIES",
    "SWEEP_BATCH",
    "SWEEP_INTERVAL",
    "Follow",
    "IdempotencyStore",
    "Lead",
    "Replay",
]

IDEMPOTENCY_INBOX: Final = 64
SWEEP_INTERVAL: Final = 1.0
REPLAY_CACHE_ENTRIES: Final = 1024
"""Completed records kept in memory for replays (``stored_value``), oldest dropped first."""
REPLAY_CACHE_BYTES: Final = 4 * 1024 * 1024
"""... and their packed answers' bytes at most; a record whose answer is over a sixteenth of
this is not kept (it is read from storage each time)."""
SWEEP_BATCH: Final = 256

log = get_logger("claykiln.idempotency")

_UNREAD: Final = object()  # ``claim`` was given no stored value: it reads the record itself


@attrs.frozen(eq=False)
class _Forget:
    key: str
    reply: Reply[bool]


@attrs.define
class _Tallies:
    """Refusals and housekeeping since start (the flights count the rest)."""

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
        self._mailbox: Mailbox[_Forget] = Mailbox("idempotency", IDEMPOTENCY_INBOX)
        self._flights = Flights()  # touched on the trio thread only, never across an await
        self._tallies = _Tallies()
        self._started = False
        self._serving = False  # start-up conversion done, not stopped: claims are served
        self.precheck_replays = 0  # replays answered on the connection reader (any task adds)
        # Completed records as read from storage, for replays: key -> (map, answer bytes).
        self._replays: dict[str, tuple[dict[str, Any], int]] = {}
        self._replay_bytes = 0
        self.replay_cache_hits = 0

    @property
    def boot(self) -> int:
        """This process's boot count (records name the boot that started them)."""
        return self._store.meta.boot_count

    def now(self) -> float:
        """Wall-clock seconds, as records store them."""
        return self._wall_clock()

    # -- reads (any task) ----------------------------------------------------------------
    def stored_value(self, key: str) -> Any:
        """The stored map of ``key`` as it is in storage (None if absent), read inline.

        A completed record, unexpired, is kept in memory once read (bounded by
        ``REPLAY_CACHE_ENTRIES`` and ``REPLAY_CACHE_BYTES``), so a key replayed again and
        again is not read from storage each time. Nothing else writes the record table (one
        daemon per store), and every write of a record through this actor drops the key's
        copy once it is committed: a completed record changes only when it expired and its key
        ran again (a leader's ``save``), or when it is forgotten or swept. The returned map
        is shared: read it, never change it."""
        kept = self._replays.get(key)
        if kept is not None:
            if self._wall_clock() < kept[0]["expires"]:
                self.replay_cache_hits += 1
                return kept[0]
            self._drop(key)
        value = self._store.get(RECORD_TABLE, storage_key(key))
        if type(value) is dict and value.get("state") == COMPLETED:
            self._keep(key, value)
        return value

    def _keep(self, key: str, value: dict[str, Any]) -> None:
        body = replay_body(value)
        expires = value.get("expires")
        if body is None or not isinstance(expires, int | float) or expires <= self.now():
            return
        size = len(body)
        if size > REPLAY_CACHE_BYTES // 16:
            return
        replays = self._replays
        while replays and (
            len(replays) >= REPLAY_CACHE_ENTRIES or self._replay_bytes + size > REPLAY_CACHE_BYTES
        ):
            self._drop(next(iter(replays)))
        replays[key] = (value, size)
        self._replay_bytes += size

    def _drop(self, key: str) -> None:
        """Forget the in-memory copy of ``key``'s record (its record is being written)."""
        kept = self._replays.pop(key, None)
        if kept is not None:
            self._replay_bytes -= kept[1]

    def _drop_all(self) -> None:
        self._replays.clear()
        self._replay_bytes = 0

    def lookup(self, key: str) -> IdempotencyRecord | None:
        """The stored record of ``key`` (completed or in doubt, expired ones included), read
        inline; None if absent."""
        return read_record(self._store, RECORD_TABLE, key)

    def lookup_current(self, key: str) -> IdempotencyRecord | None:
        """What is known of ``key`` now: the intent of a call in flight (or left in flight),
        else its record (what ``idempotency.get`` shows)."""
        return read_record(self._store, INFLIGHT_TABLE, key) or self.lookup(key)

    # -- claims (the trio thread, no await) ------------------------------------------------
    def claim(
        self,
        key: str,
        fingerprint: str,
        *,
        repeatable: bool,
        deadline: float | None,
        stored: Any = _UNREAD,
    ) -> Started:
        """Lead, follow or replay the call under ``key``, at once.

        ``stored``: the key's stored map (``stored_value``) when the caller read it in this
        same synchronous step. Raises ``IdempotencyMismatchRefusal`` (another fingerprint,
        stored or running), ``IdempotencyInDoubtRefusal`` (in doubt, not ``repeatable``),
        ``ActorStopped`` (not serving). A ``Lead`` obliges the caller to ``release`` the key
        exactly once, also when cancelled (the flight holds its followers until their
        deadlines otherwise).
        """
        if not self._serving:
            msg = "the idempotency actor is not running"
            raise ActorStopped(msg)
        flights = self._flights
        record = None
        if key not in flights:
            if key in flights.stale_intents:
                record = read_record(self._store, INFLIGHT_TABLE, key)
            if record is None:
                value = self.stored_value(key) if stored is _UNREAD else stored
                record = None if value is None else decode_record(key, value, RECORD_TABLE)
        try:
            return flights.claim(
                key, fingerprint, record, repeatable=repeatable, deadline=deadline, now=self.now()
            )
        except Refusal as refusal:
            self.note_refusal(refusal)
            raise

    def release(self, key: str, answer: FlightAnswer, *, intent_kept: bool = False) -> None:
        """The leader's end, once its outcome is durable: followers get ``answer`` and the flight
        ends. ``intent_kept``: the outcome could not be written, so the intent stays in flight
        and the key is in doubt from now on."""
        self._drop(key)
        self._flights.release(key, answer, intent_kept=intent_kept)

    async def begin(
        self, key: str, fingerprint: str, *, repeatable: bool, deadline: float | None
    ) -> Started:
        """``claim`` from a task, after a checkpoint (cancelled there, nothing was claimed)."""
        await trio.lowlevel.checkpoint()
        return self.claim(key, fingerprint, repeatable=repeatable, deadline=deadline)

    async def finish(self, key: str, answer: FlightAnswer, *, intent_kept: bool = False) -> None:
        """``release`` from a task (kept async for callers that await it)."""
        self.release(key, answer, intent_kept=intent_kept)

    # -- writes (the caller's task, through the storage writer) --------------------------
    async def save_intent(self, intent: IdempotencyRecord) -> None:
        """Write the intent of a call about to run, durably, from the caller's task (through
        the storage writer). Raises what ``Writer.write`` raises (StoreFull, StorageError);
        cancelled while waiting, the intent may still be written."""
        ops = intent_ops(intent)
        reply: Reply[None] = Reply()
        # Queued at once (no scheduler pass to post it, as ``Writer.write`` takes): the commit
        # answers the slot; a full inbox falls back to the waiting write.
        if self._writer.write_then(ops, lambda error: _settle(reply, error)):
            await reply.wait()
        else:
            await self._writer.write(ops)

    def save_then(
        self,
        record: IdempotencyRecord,
        done: Callable[[StorageError | None], None],
        *,
        previous_expiry: float | None = None,
    ) -> bool:
        """Queue ``save``'s write without waiting: ``done(None)`` once it is durable,
        ``done(error)`` if it cannot be, in the writer's task (``Writer.write_then``). False
        when the writer's inbox is full (nothing queued: use ``save``)."""
        key = record.key

        def written(error: StorageError | None) -> None:
            self._drop(key)  # committed (or not): the next read goes to storage
            done(error)

        self._drop(key)
        return self._writer.write_then(record_ops(record, previous_expiry=previous_expiry), written)

    async def save(
        self, record: IdempotencyRecord, *, previous_expiry: float | None = None
    ) -> None:
        """Write a completed or in-doubt ``record`` in place of its intent, durably
        (``previous_expiry``: the expiry of the record it replaces). Raises as ``save_intent``."""
        self._drop(record.key)
        try:
            await self._writer.write(record_ops(record, previous_expiry=previous_expiry))
        finally:
            self._drop(record.key)  # a read meanwhile saw the record as it was

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
        t, counts = self._tallies, self._flights.counts
        return {
            "records": self._store.count(RECORD_TABLE),
            "in_flight": len(self._flights),
            "waiting": self._flights.waiting,
            "begun": counts.begun,
            "led": counts.led,
            "coalesced": counts.followed,
            "replayed": counts.replayed + self.precheck_replays,
            "mismatched": t.mismatched,
            "refused_in_doubt": t.refused_in_doubt,
            "in_doubt_at_start": t.in_doubt_at_start,
            "swept": t.swept,
            "sweeps": t.sweeps,
            "replay_copies": {
                "entries": len(self._replays),
                "bytes": self._replay_bytes,
                "hits": self.replay_cache_hits,
            },
            "running": self._serving,
        }

    def note_refusal(self, error: Refusal) -> None:
        """Count a mismatch or in-doubt refusal (made by a claim or on the reader), log a
        mismatch."""
        if error.code == "idempotency_mismatch":
            self._tallies.mismatched += 1
            _log_mismatch(error)
        elif error.code == "idempotency_in_doubt":
            self._tallies.refused_in_doubt += 1

    # -- the actor -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Turn records left in flight into ``in_doubt`` (durably), then serve until cancelled."""
        if self._started:
            msg = "IdempotencyStore.run was already started; make a new one to restart"
            raise RuntimeError(msg)
        self._started = True
        self._tallies.in_doubt_at_start = await convert_in_flight(
            self._store, self._writer, self.boot
        )
        next_sweep = trio.current_time() + self._sweep_interval
        self._serving = True
        task_status.started()
        batch: list[_Forget] = []
        try:
            while True:
                batch = []
                with trio.move_on_at(next_sweep):
                    batch = await self._mailbox.drain()
                for message in batch:
                    await self._forget(message)
                if trio.current_time() >= next_sweep:
                    delay = self._sweep_interval
                    swept = await sweep_once(
                        self._store, self._writer, self.now, self._flights, self._sweep_batch
                    )
                    if swept.wrote:
                        # Expired records only, which replays never use; but nothing kept
                        # outlives a write of its table.
                        self._drop_all()
                        self._tallies.sweeps += 1
                        self._tallies.swept += swept.removed
                        delay = 0.0 if swept.full else delay
                    next_sweep = trio.current_time() + delay
        finally:
            self._serving = False
            self._mailbox.stop(batch)
            self._flights.fail_all("idempotency")

    async def _forget(self, message: _Forget) -> None:
        if message.reply.done:
            return
        if message.key in self._flights:
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
        finally:
            self._drop(message.key)
        self._flights.stale_intents.discard(message.key)
        log.info("idempotency.forgotten", key=message.key)
        message.reply.set(True)


def _settle(reply: Reply[None], error: StorageError | None) -> None:
    if error is None:
        reply.set(None)
    else:
        reply.fail(error)


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
