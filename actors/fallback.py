"""The fallback cache actor: the last good answer per key, bounded, oldest evicted first.

Card
- owns: the cache tables (``cache``: key -> ``{stored, result, size}``; ``cache_age``: uint64
  stored-at microseconds + key -> b"", the eviction order) and the running totals (entries,
  bytes; the byte total is kept in ``meta`` so a start reads it instead of scanning).
- receives: ``Remember`` (fire-and-forget: a good answer to keep), ``Purge`` (ask, admin).
- replies: to ``Purge`` the number of entries deleted.
- sends to: the storage writer, one awaited write per wake (every answer remembered in that
  wake, the evictions they force and the new totals, in one transaction); events
  cache.evicted (debug), cache.purged, cache.write_failed.
- bounds: ``max_entries`` and ``max_bytes`` (an entry's size is its stored msgpack); past
  either, the oldest entries go first. An answer bigger than ``max_bytes`` is not kept.
- reads: ``lookup`` and ``entries`` read storage inline from any task (what is committed).
- on cancellation: the inbox closes; a queued purge fails with ``ActorStopped``; answers not
  yet written are lost (they were only a cache).
- on failure: a write that fails (storage full) is logged and its answers are dropped; the
  totals are re-read from storage so they stay true.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

from claykiln.actors.log import get_logger
from claykiln.actors.mailbox import Mailbox, Reply
from claykiln.actors.writer import Writer
from claykiln.storage import Delete, Op, Put, StorageError, Store, join_key, pack, uint_key

__all__ = [
    "AGE_TABLE",
    "CACHE_INBOX",
    "CACHE_TABLE",
    "CacheBounds",
    "CachedAnswer",
    "FallbackCache",
]

CACHE_TABLE: Final = "cache"
AGE_TABLE: Final = "cache_age"
BYTES_KEY: Final = b"cache_bytes"
CACHE_INBOX: Final = 1024
PURGE_BATCH: Final = 1000
_MICROS: Final = 1_000_000

log = get_logger("claykiln.cache")


def _at_least_one(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        msg = f"cache bound {attribute.name} must be >= 1, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class CacheBounds:
    """How much the cache may hold: entries and bytes (stored msgpack), whichever binds first."""

    max_entries: int = attrs.field(default=10_000, validator=_at_least_one)
    max_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_at_least_one)


@attrs.frozen
class CachedAnswer:
    """A kept answer: the wire ``result`` and when it was stored (wall-clock seconds)."""

    key: str
    stored_at: float
    result: Mapping[str, Any]
    size: int

    def age(self, now: float) -> float:
        return now - self.stored_at


@attrs.frozen(eq=False)
class _Remember:
    key: str
    result: Mapping[str, Any]
    stored_at: float


@attrs.frozen(eq=False)
class _Purge:
    operation: str | None
    reply: Reply[int]


_Message = _Remember | _Purge


@attrs.define
class _CacheState:
    """Touched only by the actor task (``entries``/``bytes`` are read by ``stats``)."""

    entries: int = 0
    bytes: int = 0
    remembered: int = 0
    evicted: int = 0
    too_large: int = 0
    write_failures: int = 0


def _skey(key: str) -> bytes:
    return key.encode("utf-8")


def _age_key(stored_at: float, key: str) -> bytes:
    return join_key(uint_key(max(0, int(stored_at * _MICROS))), _skey(key))


class FallbackCache:
    """The daemon's fallback cache behind one actor; see the module card."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        bounds: CacheBounds,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._writer = writer
        self.bounds = bounds
        self._wall_clock = wall_clock
        self._mailbox: Mailbox[_Message] = Mailbox("cache", CACHE_INBOX)
        self._state = _CacheState()
        self._started = False
        self.served = 0  # fallback answers given (any task adds)

    def now(self) -> float:
        return self._wall_clock()

    # -- request path (any task) ---------------------------------------------------------
    def lookup(self, key: str) -> CachedAnswer | None:
        """The answer kept under ``key`` (committed), read inline; None if absent."""
        value = self._store.get(CACHE_TABLE, _skey(key))
        return _answer(key, value)

    def remember(self, key: str, result: Mapping[str, Any]) -> None:
        """Keep ``result`` as the last good answer for ``key`` (fire-and-forget; a full inbox
        drops it and counts it)."""
        self._mailbox.tell(_Remember(key, result, self.now()))

    def entries(self, operation: str | None = None, *, limit: int = 100) -> list[CachedAnswer]:
        """Up to ``limit`` kept answers, in key order, of one operation or of all."""
        start = _skey(operation + "\x00") if operation else None
        out = []
        for raw, value in self._store.items(CACHE_TABLE, start, limit=limit):
            key = raw.decode("utf-8", "replace")
            if operation and not key.startswith(operation + "\x00"):
                break
            answer = _answer(key, value)
            if answer is not None:
                out.append(answer)
        return out

    async def purge(self, operation: str | None = None) -> int:
        """Delete every kept answer (of ``operation`` only, when given); the count deleted."""
        reply: Reply[int] = Reply()
        return await self._mailbox.ask(_Purge(operation, reply), reply)

    def stats(self) -> dict[str, Any]:
        s = self._state
        return {
            "entries": s.entries,
            "bytes": s.bytes,
            "max_entries": self.bounds.max_entries,
            "max_bytes": self.bounds.max_bytes,
            "remembered": s.remembered,
            "evicted": s.evicted,
            "too_large": s.too_large,
            "dropped": self._mailbox.dropped,
            "write_failures": s.write_failures,
            "served": self.served,
            "running": self._started and not self._mailbox.stopped,
        }

    # -- the actor -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the totals, then keep answers until cancelled (once only)."""
        if self._started:
            msg = "FallbackCache.run was already started; make a new one to restart"
            raise RuntimeError(msg)
        self._started = True
        self._read_totals()
        task_status.started()
        batch: list[_Message] = []
        try:
            while True:
                batch = await self._mailbox.drain()
                remembers = {m.key: m for m in batch if isinstance(m, _Remember)}
                if remembers:
                    await self._keep(list(remembers.values()))
                for message in batch:
                    if isinstance(message, _Purge):
                        await self._purge(message)
        finally:
            self._mailbox.stop(batch)

    def _read_totals(self) -> None:
        self._state.entries = self._store.count(CACHE_TABLE)
        stored = self._store.get("meta", BYTES_KEY)
        self._state.bytes = int(stored) if isinstance(stored, int) else 0

    async def _keep(self, remembers: list[_Remember]) -> None:
        state = self._state
        ops: list[Op] = []
        entries, size_total = state.entries, state.bytes
        replaced: set[str] = set()
        for message in remembers:
            value = {"stored": message.stored_at, "result": dict(message.result)}
            try:
                size = len(pack(value))
            except StorageError:
                state.too_large += 1  # not msgpack-encodable: cannot be kept
                continue
            if size > self.bounds.max_bytes:
                state.too_large += 1
                continue
            value["size"] = size
            old = self.lookup(message.key)
            if old is not None:
                ops.append(Delete(AGE_TABLE, _age_key(old.stored_at, old.key)))
                entries -= 1
                size_total -= old.size
            ops.append(Put(CACHE_TABLE, _skey(message.key), value))
            ops.append(Put(AGE_TABLE, _age_key(message.stored_at, message.key), b""))
            replaced.add(message.key)
            entries += 1
            size_total += size
        evicted = 0
        if entries > self.bounds.max_entries or size_total > self.bounds.max_bytes:
            evictions, entries, size_total = self._evictions(entries, size_total, replaced)
            ops.extend(evictions)
            evicted = sum(1 for op in evictions if op.table == CACHE_TABLE)
        if not ops:
            return
        ops.append(Put("meta", BYTES_KEY, size_total))
        try:
            await self._writer.write(ops)
        except StorageError as exc:
            state.write_failures += 1
            log.warning("cache.write_failed", error=str(exc), answers=len(remembers))
            self._read_totals()
            return
        state.entries, state.bytes = entries, size_total
        state.remembered += len(replaced)
        state.evicted += evicted
        if evicted:
            log.debug("cache.evicted", entries=evicted)

    def _evictions(
        self, entries: int, size_total: int, replaced: set[str]
    ) -> tuple[list[Op], int, int]:
        """Delete the oldest committed entries (not refreshed in this batch) until within
        bounds; returns the ops and the totals after them."""
        ops: list[Op] = []
        start: bytes | None = None
        bounds = self.bounds
        while entries > bounds.max_entries or size_total > bounds.max_bytes:
            chunk = self._store.items(AGE_TABLE, start, limit=64)
            if start is not None:
                chunk = chunk[1:]  # ``start`` itself was handled in the previous chunk
            if not chunk:
                break
            for raw, _ in chunk:
                start = raw
                key = raw[9:].decode("utf-8", "replace")
                if key in replaced:
                    continue  # its old age entry is already deleted; it stays
                old = self.lookup(key)
                ops.append(Delete(AGE_TABLE, raw))
                if old is None:
                    continue
                ops.append(Delete(CACHE_TABLE, _skey(key)))
                entries -= 1
                size_total -= old.size
                if entries <= bounds.max_entries and size_total <= bounds.max_bytes:
                    break
        return ops, entries, size_total

    async def _purge(self, message: _Purge) -> None:
        if message.reply.done:
            return
        deleted = 0
        try:
            while True:
                batch = self.entries(message.operation, limit=PURGE_BATCH)
                if not batch:
                    break
                ops: list[Op] = []
                for answer in batch:
                    ops.append(Delete(CACHE_TABLE, _skey(answer.key)))
                    ops.append(Delete(AGE_TABLE, _age_key(answer.stored_at, answer.key)))
                    self._state.entries -= 1
                    self._state.bytes -= answer.size
                ops.append(Put("meta", BYTES_KEY, max(0, self._state.bytes)))
                await self._writer.write(ops)
                deleted += len(batch)
        except StorageError as exc:
            self._read_totals()
            message.reply.fail(exc)
            return
        log.info("cache.purged", operation=message.operation, entries=deleted)
        message.reply.set(deleted)


def _answer(key: str, value: Any) -> CachedAnswer | None:
    if not isinstance(value, Mapping):
        return None
    result = value.get("result")
    stored = value.get("stored")
    if not isinstance(result, Mapping) or not isinstance(stored, int | float):
        return None
    return CachedAnswer(key, float(stored), result, int(value.get("size", 0)))
