"""The writer actor: the one task that writes to the store, by group commit.

Owns:     the store's write side (the only code that begins a write transaction) and its inbox.
Receives: an ask per ``write`` / ``write_nowait`` call: validated, encoded ops and a reply slot.
Replies:  each time it wakes it drains EVERYTHING queued and applies it in ONE write transaction
          in ONE worker thread, then completes every slot: success only once that transaction
          committed (fsynced when the store syncs). Asks are applied in the order they queued.
On failure: a map-full batch makes the actor grow the map (doubling, up to max_map_size) and
          retry; at the ceiling, or on any other LMDB error, the batch is re-run with each ask in
          its own nested transaction (still one commit), so only the asks that cannot be written
          fail (StoreFull / StorageError) and the others commit. The actor keeps running.
On cancellation: a batch already in the worker thread finishes (threads cannot be interrupted)
          and its asks get their real outcome; every other queued ask fails with StorageClosed.
          The same holds if the actor dies of a bug: no ask is left hanging.
Shutdown: ``aclose()`` stops accepting, lets the actor flush everything queued and return.

Usage::

    writer = Writer(store)
    await nursery.start(writer.run)
    await writer.write([Put("jobs", key, job), Delete("jobs_due", old_due_key)])
    ...
    await writer.aclose()
    store.close()
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import structlog
import trio

from claykiln.storage import Op, StorageClosed, StorageError, Store, StoreFull
from claykiln.storage.ops import PreparedOp

__all__ = ["WRITER_INBOX", "Writer", "WriterStats"]

WRITER_INBOX = 4096
"""Asks the writer's inbox holds; ``write`` waits for room, ``write_nowait`` reports no room."""

# Bound like daemon/logs.get_logger (storage may not import daemon/): lines carry `logger`.
_log = structlog._config.BoundLoggerLazyProxy(
    None, initial_values={"logger": "claykiln.actors.writer"}
)


@attrs.define(eq=False)
class _Ask:
    """A reply slot (mutable by design): the actor sets ``error`` (None = committed), then
    ``done``. Only the writer task writes it; the asking task reads it after ``done``."""

    ops: tuple[PreparedOp, ...]
    waited: bool
    done: trio.Event = attrs.field(factory=trio.Event)
    error: StorageError | None = None


@attrs.define
class _Counters:
    """The actor's own tallies; ``Writer.stats`` hands out frozen copies."""

    transactions: int = 0
    asks: int = 0
    ops: int = 0
    failed: int = 0
    nowait_failed: int = 0
    map_grows: int = 0


@attrs.frozen
class WriterStats:
    """Counters since start: ``transactions`` committed, ``asks`` and ``ops`` committed, asks
    ``failed`` (of which ``nowait_failed`` came from ``write_nowait``), ``map_grows`` done."""

    transactions: int = 0
    asks: int = 0
    ops: int = 0
    failed: int = 0
    nowait_failed: int = 0
    map_grows: int = 0


class Writer:
    """The group-commit writer of one ``Store``; run exactly one per store."""

    def __init__(self, store: Store, *, inbox_size: int = WRITER_INBOX) -> None:
        self._store = store
        self._send, self._recv = trio.open_memory_channel[_Ask](inbox_size)
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self._started = False
        self._stopped = trio.Event()
        self._counters = _Counters()

    # ---- the callers' side -----------------------------------------------------------------

    async def write(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` atomically; return once they are committed (durable when sync).

        ``write([])`` is a barrier: it returns once everything queued before it is committed.
        Waits for room when the inbox is full. Raises StorageError for an invalid op (nothing
        is queued), StoreFull when the map is at its ceiling, StorageClosed once the writer is
        closed or stopped, StorageError for any other storage failure. If the caller is
        cancelled while waiting for room, nothing is written; once queued, the ops may still
        commit after the cancellation (the batch is not disturbed).
        """
        ask = self._ask(ops, waited=True)
        try:
            await self._send.send(ask)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._closed_error() from None
        await ask.done.wait()
        if ask.error is not None:
            raise ask.error

    def write_nowait(self, ops: Sequence[Op]) -> bool:
        """Queue ``ops`` without waiting for the commit; False (nothing queued) if inbox is full.

        Promises: the ops are applied atomically, in order with every other write, by the next
        transaction; they are durable once a later ``write`` (e.g. the barrier ``write([])``)
        returns. They are lost if the process dies before that commit, and a failure to commit
        is not reported to the caller: it is logged (``storage.write_failed``) and counted in
        ``stats().nowait_failed``. Raises StorageError for an invalid op, StorageClosed if closed.
        """
        ask = self._ask(ops, waited=False)
        try:
            self._send.send_nowait(ask)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._closed_error() from None
        return True

    def stats(self) -> WriterStats:
        """A snapshot of the counters."""
        return WriterStats(**attrs.asdict(self._counters))

    @property
    def queued(self) -> int:
        """Asks waiting in the inbox (not counting the batch being committed)."""
        return self._send.statistics().current_buffer_used

    async def aclose(self) -> None:
        """Stop accepting writes, let the actor commit everything queued, wait for it to return.

        Idempotent. If the actor is not running (never started, or already stopped), queued
        asks fail with StorageClosed. Cancelling ``aclose`` stops the wait, not the flush.
        """
        self._closed = True
        self._send.close()
        if self._started:
            await self._stopped.wait()
        else:
            self._fail_queued(self._closed_error())
            self._stopped.set()

    # ---- the actor -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The actor loop; start it with ``await nursery.start(writer.run)``. Returns after
        ``aclose()`` once everything queued is committed. Raises RuntimeError if run twice."""
        if self._started:
            msg = "this Writer already ran; make a new Writer for a new run"
            raise RuntimeError(msg)
        self._started = True
        batch: list[_Ask] = []
        stop_reason = "the writer is closed"
        try:
            task_status.started()
            while True:
                try:
                    batch = [await self._recv.receive()]
                except trio.EndOfChannel:
                    return
                self._drain_into(batch)
                await self._commit(batch)
                batch = []
        except trio.Cancelled:
            stop_reason = "the writer was cancelled before committing this write"
            raise
        except BaseException as exc:
            stop_reason = f"the writer stopped on an error before committing this write: {exc!r}"
            raise
        finally:
            self._closed = True
            self._send.close()
            for ask in batch:
                if not ask.done.is_set():
                    self._complete(ask, StorageClosed(stop_reason))
            self._fail_queued(StorageClosed(stop_reason))
            self._stopped.set()

    def _drain_into(self, batch: list[_Ask]) -> None:
        while True:
            try:
                batch.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def _commit(self, batch: list[_Ask]) -> None:
        """Commit ``batch`` in one transaction, growing the map as needed; isolate on failure."""
        groups = [ask.ops for ask in batch]
        while True:
            error = await trio.to_thread.run_sync(
                self._store.commit_group, groups, limiter=self._limiter
            )
            if error is None:
                self._counters.transactions += 1
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

    async def _commit_isolated(self, batch: list[_Ask]) -> None:
        """Commit each ask of ``batch`` in its own nested transaction; retry the map-full ones
        after growing the map, fail them with StoreFull at the ceiling."""
        pending = batch
        while pending:
            results = await trio.to_thread.run_sync(
                self._store.commit_isolated, [ask.ops for ask in pending], limiter=self._limiter
            )
            if any(error is None for error in results):
                self._counters.transactions += 1
            full: list[tuple[_Ask, StorageError]] = []
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

    def _grow(self) -> bool:
        grown = self._store.grow()
        if grown:
            self._counters.map_grows += 1
            _log.info("storage.map_grown", map_size=self._store.map_size)
        return grown

    def _complete(self, ask: _Ask, error: StorageError | None) -> None:
        ask.error = error
        ask.done.set()
        counters = self._counters
        if error is None:
            counters.asks += 1
            counters.ops += len(ask.ops)
        else:
            counters.failed += 1
            if not ask.waited:
                counters.nowait_failed += 1
                _log.warning("storage.write_failed", error=str(error), ops=len(ask.ops))

    def _fail_queued(self, error: StorageClosed) -> None:
        while True:
            try:
                ask = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._complete(ask, _copy_error(error))

    # ---- helpers ---------------------------------------------------------------------------

    def _ask(self, ops: Sequence[Op], *, waited: bool) -> _Ask:
        if self._closed:
            raise self._closed_error()
        return _Ask(self._store.prepare(ops), waited)

    def _closed_error(self) -> StorageClosed:
        return StorageClosed(f"the writer of {self._store.path} is closed; no more writes")


def _copy_error(error: StorageError) -> StorageError:
    """A fresh instance per ask: one exception object must not be raised in several tasks."""
    return type(error)(*error.args)
