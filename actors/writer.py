"""The writer actor: the one task that writes to the store, by group commit.

Owns:     the store's write side (the only code that begins a write transaction) and its inbox.
Receives: an ask per ``write`` / ``write_nowait`` / ``write_then`` call: validated, encoded ops
          and a reply slot (for ``write_then``, the caller's ``done`` function instead).
Replies:  each time it wakes it drains EVERYTHING queued and applies it in ONE write transaction
          in ONE worker thread, then completes every slot: success only once that transaction
          committed (fsynced when the store syncs). Asks are applied in the order they queued.
          A ``write_then`` ask is completed by calling its ``done`` in the writer's task: no
          asker wakes (a durable ``submit`` is acknowledged from there, without a task).
On failure: a map-full batch makes the actor grow the map (doubling, up to max_map_size) and
          retry; at the ceiling, or on any other LMDB error, the batch is re-run with each ask in
          its own nested transaction (still one commit), so only the asks that cannot be written
          fail (StoreFull / StorageError) and the others commit. The actor keeps running.
          A ``write_nowait`` that fails (no caller hears of it: a full disk, a map at its
          ceiling) is held, latest op per key, and written again every ``HELD_RETRY`` seconds
          until it commits (``storage.write_retried``), so breaker and gate state saved while
          the disk was full reaches it once space returns; a later committed write of the same
          key supersedes the held op (it is dropped, never written over the newer value).
On cancellation: a batch already in the worker thread finishes (threads cannot be interrupted)
          and its asks get their real outcome; every other queued ask fails with StorageClosed.
          The same holds if the actor dies of a bug: no ask is left hanging.
Shutdown: ``aclose()`` stops accepting, lets the actor flush everything queued (held ops get one
          last try; what still fails is logged as ``storage.write_lost``) and return.

Usage::

    writer = Writer(store)
    await nursery.start(writer.run)
    await writer.write([Put("jobs", key, job), Delete("jobs_due", old_due_key)])
    ...
    await writer.aclose()
    store.close()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Final, NamedTuple, cast

import attrs
import outcome
import trio

from claykiln.actors.log import get_logger
from claykiln.actors.mailbox import ActorStopped, Mailbox, Reply, Then
from claykiln.storage import Encoded, Op, StorageClosed, StorageError, Store, StoreFull
from claykiln.storage.handoff import HANDOFF
from claykiln.storage.ops import PreparedOp

__all__ = ["HELD_RETRY", "MAX_HELD", "WRITER_INBOX", "HeldOps", "Writer", "WriterStats"]

WRITER_INBOX = 4096
"""Asks the writer's inbox holds; ``write`` waits for room, ``write_nowait`` reports no room."""
HELD_RETRY: Final = 1.0
"""Seconds between attempts to write the held (failed fire-and-forget) ops again."""
MAX_HELD: Final = 10_000
"""Keys held for a retry at most; past it the oldest are dropped (``storage.write_dropped``)."""

_log = get_logger("claykiln.actors.writer")

_AnyDone = Callable[[BaseException | None], None]  # built once: a subscript per call costs ~3 us


class _Write(NamedTuple):
    """One ask: prepared ops and the slot the actor completes (None once committed, or the
    error). ``waited``: from ``write`` (the caller hears the outcome), not ``write_nowait``.
    A named tuple, as the ops are (storage/ops.py): every write makes one."""

    ops: tuple[PreparedOp, ...]
    waited: bool
    reply: Reply[None]


@attrs.define
class WriterStats:
    """Counters since start: ``transactions`` committed, ``asks`` and ``ops`` committed, asks
    ``failed`` (of which ``nowait_failed`` came from ``write_nowait``), ``map_grows`` done.
    The writer task keeps its own; ``Writer.stats`` hands out copies."""

    transactions: int = 0
    asks: int = 0
    ops: int = 0
    failed: int = 0
    nowait_failed: int = 0
    map_grows: int = 0
    held: int = 0  # ops of failed fire-and-forget writes waiting for a retry now
    retried: int = 0  # held ops written by a retry
    dropped: int = 0  # held ops given up (superseded ones are not counted: nothing was lost)


class HeldOps:
    """The ops of failed fire-and-forget writes, latest per (table, key), oldest first; pure.

    ``hold`` keeps an ask's ops (a key held again moves to the end with its newer op);
    ``supersede`` drops the keys a committed write just set (their held op is older);
    ``take`` hands every op out for a retry and forgets them (``hold`` them again if it
    fails). Past ``limit`` keys the oldest are dropped and counted in ``hold``'s result.
    """

    def __init__(self, limit: int = MAX_HELD) -> None:
        self.limit = limit
        self._ops: dict[tuple[str, bytes], PreparedOp] = {}

    def __len__(self) -> int:
        return len(self._ops)

    def hold(self, ops: Iterable[PreparedOp]) -> int:
        """Keep ``ops``; returns how many older ops had to be dropped to stay within the limit."""
        held = self._ops
        for op in ops:
            held.pop((op.table, op.key), None)
            held[(op.table, op.key)] = op
        dropped = 0
        while len(held) > self.limit:
            del held[next(iter(held))]
            dropped += 1
        return dropped

    def supersede(self, ops: Iterable[PreparedOp]) -> None:
        """Forget the held op of every key in ``ops`` (a newer value was just committed)."""
        held = self._ops
        for op in ops:
            held.pop((op.table, op.key), None)

    def take(self) -> tuple[PreparedOp, ...]:
        """Every held op, oldest first, and forget them."""
        ops = tuple(self._ops.values())
        self._ops.clear()
        return ops


class Writer:
    """The group-commit writer of one ``Store``; run exactly one per store."""

    def __init__(self, store: Store, *, inbox_size: int = WRITER_INBOX) -> None:
        self._store = store
        self._mailbox: Mailbox[_Write] = Mailbox("writer", inbox_size)
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self._started = False
        self._stopped = trio.Event()
        self._state = WriterStats()  # the actor's own tallies
        self._held = HeldOps()  # failed fire-and-forget ops waiting to be written again

    # ---- the callers' side -----------------------------------------------------------------

    async def write(self, ops: Sequence[Op] | Encoded) -> None:
        """Apply ``ops`` atomically; return once they are committed (durable when sync).

        ``ops``: ``Put`` and ``Delete`` ops, checked and encoded here (``Store.prepare``), or
        ops their maker already ``Encoded`` (queued as they are; storage/ops.py).

        ``write([])`` is a barrier: it returns once everything queued before it is committed.
        Waits for room when the inbox is full. Raises StorageError for an invalid op (nothing
        is queued), StoreFull when the map is at its ceiling, StorageClosed once the writer is
        closed or stopped, StorageError for any other storage failure. If the caller is
        cancelled while waiting for room, nothing is written; once queued, the ops may still
        commit after the cancellation (the batch is not disturbed).
        """
        ask = self._ask(ops, waited=True)
        try:
            await self._mailbox.ask(ask, ask.reply)
        except ActorStopped:
            raise self._closed_error() from None

    def write_nowait(self, ops: Sequence[Op] | Encoded) -> bool:
        """Queue ``ops`` without waiting for the commit; False (nothing queued) if inbox is full.

        Promises: the ops are applied atomically, in order with every other write, by the next
        transaction; they are durable once a later ``write`` (e.g. the barrier ``write([])``)
        returns. They are lost if the process dies before that commit, and a failure to commit
        is not reported to the caller: it is logged (``storage.write_failed``) and counted in
        ``stats().nowait_failed``. Raises StorageError for an invalid op, StorageClosed if closed.
        """
        return self._post_nowait(self._ask(ops, waited=False))

    def write_then(
        self, ops: Sequence[Op] | Encoded, done: Callable[[StorageError | None], None]
    ) -> bool:
        """Queue ``ops`` like ``write``, without waiting: ``done(None)`` is called once they are
        committed (durable when the store syncs), ``done(error)`` if they cannot be (StoreFull,
        StorageError, StorageClosed when the writer stops first). ``done`` runs in the writer's
        task on the trio thread: it must be quick and must not raise (an exception there stops
        the writer, as a bug in it would). False, and ``done`` is never called, when the inbox
        is full (nothing queued: use ``write``). Raises StorageError for an invalid op,
        StorageClosed once the writer is closed."""
        # The actor fails asks with StorageError only (StorageClosed included).
        return self._post_nowait(_Write(self._prepared(ops), True, Then(cast(_AnyDone, done))))

    def _post_nowait(self, ask: _Write) -> bool:
        """Queue ``ask`` without waiting: False when the inbox is full (nothing queued)."""
        try:
            self._mailbox.post_nowait(ask)
        except trio.WouldBlock:
            return False
        except ActorStopped:
            raise self._closed_error() from None
        return True

    def stats(self) -> WriterStats:
        """A snapshot of the counters."""
        return attrs.evolve(self._state)

    @property
    def queued(self) -> int:
        """Asks waiting in the inbox (not counting the batch being committed)."""
        return self._mailbox.queued

    async def aclose(self) -> None:
        """Stop accepting writes, let the actor commit everything queued, wait for it to return.

        Idempotent. If the actor is not running (never started, or already stopped), queued
        asks fail with StorageClosed. Cancelling ``aclose`` stops the wait, not the flush.
        """
        self._closed = True
        self._mailbox.close()
        if self._started:
            await self._stopped.wait()
        else:
            self._stop((), str(self._closed_error()))

    # ---- the actor -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The actor loop; start it with ``await nursery.start(writer.run)``. Returns after
        ``aclose()`` once everything queued is committed. Raises RuntimeError if run twice."""
        if self._started:
            msg = "this Writer already ran; make a new Writer for a new run"
            raise RuntimeError(msg)
        self._started = True
        batch: list[_Write] = []
        stop_reason = "the writer is closed"
        retry_at = trio.current_time() + HELD_RETRY
        try:
            task_status.started()
            while True:
                try:
                    # Held ops wake the actor for their retry even when no ask comes.
                    with trio.move_on_at(retry_at if self._held else math.inf):
                        batch = await self._mailbox.drain()
                except trio.EndOfChannel:
                    await self._retry_held(last=True)
                    return
                if batch:
                    await self._commit(batch)
                    batch = []
                due = trio.current_time() >= retry_at
                if self._held and due:
                    await self._retry_held()
                if due or not self._held:
                    retry_at = trio.current_time() + HELD_RETRY
        except trio.Cancelled:
            stop_reason = "the writer was cancelled before committing this write"
            raise
        except BaseException as exc:
            stop_reason = f"the writer stopped on an error before committing this write: {exc!r}"
            raise
        finally:
            self._stop(batch, stop_reason)

    def _stop(self, batch: Iterable[_Write], reason: str) -> None:
        """Refuse later writes and fail every ask left unanswered with StorageClosed."""
        self._closed = True
        for ask in self._mailbox.stop(batch, error=lambda: StorageClosed(reason)):
            self._count_failure(ask, StorageClosed(reason))
        self._stopped.set()

    async def _commit(self, batch: list[_Write]) -> None:
        """Commit ``batch`` in one transaction, growing the map as needed; isolate on failure."""
        groups = [ask.ops for ask in batch]
        while True:
            error = await _commit_in_thread(self._store, groups)
            if error is None:
                self._state.transactions += 1
                for ask in batch:
                    self._complete(ask, None)
                return
            if not (isinstance(error, StoreFull) and self._grow()):
                break
        if isinstance(error, StorageClosed) or len(batch) == 1:
            for ask in batch:
                self._complete(ask, _copy_error(error))
            return
        await self._commit_isolated(batch)

    async def _commit_isolated(self, batch: list[_Write]) -> None:
        """Commit each ask of ``batch`` in its own nested transaction; retry the map-full ones
        after growing the map, fail them with StoreFull at the ceiling."""
        pending = batch
        while pending:
            results = await trio.to_thread.run_sync(
                self._store.commit_isolated, [ask.ops for ask in pending], limiter=self._limiter
            )
            if any(error is None for error in results):
                self._state.transactions += 1
            full: list[tuple[_Write, StorageError]] = []
            for ask, error in zip(pending, results, strict=True):
                if isinstance(error, StoreFull):
                    full.append((ask, error))
                else:
                    self._complete(ask, error)
            if full and self._grow():
                pending = [ask for ask, _ in full]
                continue
            for ask, error in full:
                self._complete(ask, error)
            pending = []

    async def _retry_held(self, *, last: bool = False) -> None:
        """Write the held ops again in one transaction (growing the map if it is full); hold
        them again if that fails, or, when ``last`` (the writer is closing), log them lost."""
        ops = self._held.take()
        if not ops:
            return
        while True:
            error = await trio.to_thread.run_sync(
                self._store.commit_group, [ops], limiter=self._limiter
            )
            if not (isinstance(error, StoreFull) and self._grow()):
                break
        state = self._state
        if error is None:
            state.transactions += 1
            state.retried += len(ops)
            state.held = 0
            _log.info("storage.write_retried", ops=len(ops))
            return
        if last or isinstance(error, StorageClosed):
            state.dropped += len(ops)
            state.held = 0
            _log.error("storage.write_lost", ops=len(ops), error=str(error))
            return
        self._hold(ops)

    def _hold(self, ops: Iterable[PreparedOp]) -> None:
        dropped = self._held.hold(ops)
        state = self._state
        state.held = len(self._held)
        if dropped:
            state.dropped += dropped
            _log.warning("storage.write_dropped", ops=dropped, limit=self._held.limit)

    def _grow(self) -> bool:
        grown = self._store.grow()
        if grown:
            self._state.map_grows += 1
            _log.info("storage.map_grown", map_size=self._store.map_size)
        return grown

    def _complete(self, ask: _Write, error: StorageError | None) -> None:
        if error is None:
            ask.reply.set(None)
            self._state.asks += 1
            self._state.ops += len(ask.ops)
            if self._held:
                self._held.supersede(ask.ops)
                self._state.held = len(self._held)
        else:
            ask.reply.fail(error)
            self._count_failure(ask, error)
            if not ask.waited and not isinstance(error, StorageClosed):
                self._hold(ask.ops)

    def _count_failure(self, ask: _Write, error: StorageError) -> None:
        state = self._state
        state.failed += 1
        if not ask.waited:
            state.nowait_failed += 1
            _log.warning(
                "storage.write_failed", error=str(error), ops=len(ask.ops), held=len(self._held)
            )

    # ---- helpers ---------------------------------------------------------------------------

    def _ask(self, ops: Sequence[Op] | Encoded, *, waited: bool) -> _Write:
        return _Write(self._prepared(ops), waited, Reply())

    def _prepared(self, ops: Sequence[Op] | Encoded) -> tuple[PreparedOp, ...]:
        if self._closed:
            raise self._closed_error()
        if isinstance(ops, Encoded):
            return ops.ops  # encoded by their maker, who answers for them (storage/ops.py)
        return self._store.prepare(ops)

    def _closed_error(self) -> StorageClosed:
        return StorageClosed(f"the writer of {self._store.path} is closed; no more writes")


def _copy_error(error: StorageError) -> StorageError:
    """A fresh instance per ask: one exception object must not be raised in several tasks."""
    return type(error)(*error.args)


async def _commit_in_thread(
    store: Store, groups: Sequence[Sequence[PreparedOp]]
) -> StorageError | None:
    """``store.commit_group(groups)`` in a worker thread, the trio thread handing it the GIL
    for its puts at once (storage/handoff.py): it blocks, the GIL released, until the worker
    applied them, then goes on while the worker writes and syncs. Like
    ``trio.to_thread.run_sync`` without a limiter (one writer, one commit at a time). Not
    cancellable while the thread runs: a commit in progress completes, as with
    ``to_thread.run_sync``.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[StorageError | None]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    HANDOFF.request()  # before the worker can release it
    trio.lowlevel.start_thread_soon(partial(store.commit_group, groups), deliver)
    HANDOFF.give()
    # A cancellation asked meanwhile is delivered at the writer's next checkpoint, after the
    # batch's asks are completed: a write that was committed is never reported lost.
    error: StorageError | None = await trio.lowlevel.wait_task_rescheduled(
        lambda _raise_cancel: trio.lowlevel.Abort.FAILED
    )
    return error
