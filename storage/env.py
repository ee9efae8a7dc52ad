"""The LMDB environment: one directory, named tables, msgpack values, inline reads.

A ``Store`` owns one LMDB environment. Reads (``get``, ``items``, ``count``, ``usage``) run
inline on the calling thread in a short read transaction and return materialized values, so no
read transaction ever lives across an ``await``. Writes do not happen on the calling thread:
they go through the one writer actor (``claykiln.actors.writer``), which calls
``commit_group`` / ``commit_isolated`` in a worker thread (the transactions themselves are in
storage/transactions.py) and ``grow`` on the trio thread between batches.

Threading assumption (LMDB's ``set_mapsize`` needs no live transaction in the process): reads
are made from the trio thread that runs the writer, so none is open while ``grow`` remaps; the
write lock keeps a write transaction out. Code that reads from other threads must not run while
the writer may grow the map.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import lmdb

from claykiln.storage.codec import pack, unpack
from claykiln.storage.errors import RecordDamaged, StorageClosed, StorageError, StoreFull
from claykiln.storage.handoff import HANDOFF
from claykiln.storage.integrity import check_files, walk_in_child
from claykiln.storage.ops import Delete, Op, PreparedOp, Put
from claykiln.storage.schema import RESERVED_META_KEYS, StoreMeta, initialize
from claykiln.storage.transactions import commit_group, commit_isolated

__all__ = [
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MAP_SIZE",
    "TABLES",
    "StorageUsage",
    "Store",
]

TABLES = (
    "meta",
    "idempotency",
    "idempotency_expiry",
    "idempotency_inflight",
    "jobs",
    "jobs_due",
    "jobs_retry",
    "jobs_inflight",
    "jobs_dead",
    "jobs_done",
    "jobs_keys",
    "quota",
    "breakers",
    "gate",
    "cache",
    "cache_age",
)
DEFAULT_MAP_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_MAP_SIZE = 4 * 1024 * 1024 * 1024
MAX_READERS = 126
MAX_DBS = 32  # named tables an environment may hold (TABLES plus room to grow)
_PAGE = mmap.PAGESIZE

# Directory identities (st_dev, st_ino) of stores open in this process: LMDB forbids a second
# open of one environment per process (its fcntl locks would be shared and released early).
_open_dirs: set[tuple[int, int]] = set()
_open_dirs_lock = threading.Lock()


@attrs.frozen
class StorageUsage:
    """Space use: ``used_bytes`` is the high-water mark of pages (freed pages are reused inside
    it); ``ceiling`` is what the store can reach: ``max_map_size``, or the pages in use plus the
    free space of the disk under it when that is smaller (``disk_bound``); ``ratio`` is
    ``used_bytes / ceiling``, so a full disk reads close to 1.0 whatever ``max_map_size`` says.
    ``disk_free``: bytes the disk still gives the store's user (None: statvfs failed)."""

    map_size: int
    used_bytes: int
    max_map_size: int
    ratio: float
    entries: dict[str, int]
    ceiling: int = 0
    disk_free: int | None = None
    disk_bound: bool = False


def _page_floor(size: int) -> int:
    return max(_PAGE, size - size % _PAGE)


class Store:
    """One open LMDB environment with the named ``TABLES``. Create it with ``Store.open``."""

    __slots__ = ("_dbs", "_env", "_identity", "_map_size", "_max_map_size", "_write_lock", "meta")

    def __init__(
        self,
        env: lmdb.Environment,
        dbs: dict[str, lmdb._Database],
        meta: StoreMeta,
        *,
        identity: tuple[int, int],
        max_map_size: int,
    ) -> None:
        self._env: lmdb.Environment | None = env
        self._dbs = dbs
        self.meta = meta
        self._identity = identity
        self._map_size = int(env.info()["map_size"])
        self._max_map_size = max(max_map_size, self._map_size)
        self._write_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        sync: bool = True,
        check: bool = True,
    ) -> Store:
        """Open (creating if needed) the environment in directory ``path`` (made mode 0700).

        Blocking: it creates files and makes one durable commit (schema version, boot id and
        count, table list), so async code calls it in a worker thread. Clears stale reader
        slots left by killed processes. The map starts at ``map_size`` (or what the data already
        needs) and the writer grows it up to ``max_map_size``. ``sync=False`` skips fsync:
        commits survive a process crash but not an OS crash or power loss.

        Before LMDB maps a page, the files are checked (storage/integrity.py): always the data
        file against its meta pages; with ``check`` (the default) also every page and record,
        read in a child process (``meta.integrity_seconds`` says how long that took).

        Raises StoreDamaged (nothing opened, nothing written) when a check fails, SchemaError if
        the data has a newer (or unknown) schema version, StorageError if ``path`` is already
        open in this process or LMDB/the filesystem refuses, ValueError for sizes that make no
        sense.
        """
        if map_size <= 0 or max_map_size < map_size:
            msg = f"need 0 < map_size <= max_map_size, got {map_size} and {max_map_size}"
            raise ValueError(msg)
        path = Path(path)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = path.stat()
        except OSError as exc:
            msg = f"cannot create the state directory {path}: {exc}"
            raise StorageError(msg) from exc
        identity = (st.st_dev, st.st_ino)
        with _open_dirs_lock:
            if identity in _open_dirs:
                msg = f"the store at {path} is already open in this process; open once, share it"
                raise StorageError(msg)
            _open_dirs.add(identity)
        env: lmdb.Environment | None = None
        try:
            check_files(path)
            walked = walk_in_child(path) if check and _has_data(path) else None
            env = lmdb.open(
                str(path),
                map_size=_page_floor(map_size),
                max_dbs=MAX_DBS,
                max_readers=MAX_READERS,
                sync=sync,
                metasync=sync,
                readahead=False,
                mode=0o600,
                subdir=True,
                lock=True,
            )
            cleared = env.reader_check()
            dbs, meta = initialize(
                env,
                path,
                TABLES,
                stale_readers_cleared=cleared,
                integrity_seconds=None if walked is None else float(walked["seconds"]),
            )
        except lmdb.Error as exc:
            _release(identity, env)
            msg = f"cannot open the LMDB store at {path}: {exc}"
            raise StorageError(msg) from exc
        except BaseException:
            _release(identity, env)
            raise
        return cls(env, dbs, meta, identity=identity, max_map_size=_page_floor(max_map_size))

    @property
    def path(self) -> Path:
        """The environment's directory."""
        return self.meta.path

    @property
    def map_size(self) -> int:
        """The current size of the map in bytes (grows up to ``max_map_size``)."""
        return self._map_size

    @property
    def max_map_size(self) -> int:
        """The ceiling the map may grow to."""
        return self._max_map_size

    @property
    def closed(self) -> bool:
        """True once ``close`` ran."""
        return self._env is None

    def close(self) -> None:
        """Close the environment (idempotent). Waits for a write transaction in progress in the
        writer's thread; call ``Writer.aclose`` first so queued writes are flushed, not failed."""
        with self._write_lock:
            env, self._env = self._env, None
            if env is not None:
                env.close()
                _release(self._identity, None)

    # ---- reads: inline, short, materialized -------------------------------------------------

    def get(self, table: str, key: bytes) -> Any | None:
        """The decoded value of ``key`` in ``table``, or None if absent."""
        env, db = self._env_db(table)
        try:
            with env.begin(db=db) as txn:
                raw = txn.get(key)
        except lmdb.Error as exc:
            raise _read_error(table, exc) from exc
        return None if raw is None else _decode(table, key, raw)

    def items(
        self,
        table: str,
        start: bytes | None = None,
        *,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, Any]]:
        """Up to ``limit`` (key, value) pairs in key order from ``start`` (inclusive).

        Forward: keys >= start, ascending. ``reverse=True``: keys <= start, descending (from the
        last key when ``start`` is None). The result is a list: no transaction outlives the call.
        """
        env, db = self._env_db(table)
        out: list[tuple[bytes, Any]] = []
        if limit is not None and limit <= 0:
            return out
        try:
            with env.begin(db=db) as txn, txn.cursor() as cur:
                if reverse:
                    positioned = _seek_last_at_most(cur, start)
                    pairs: Iterable[tuple[bytes, bytes]] = cur.iterprev() if positioned else ()
                else:
                    positioned = cur.first() if start is None else cur.set_range(start)
                    pairs = cur.iternext() if positioned else ()
                for key, raw in pairs:
                    out.append((key, _decode(table, key, raw)))
                    if limit is not None and len(out) >= limit:
                        break
        except lmdb.Error as exc:
            raise _read_error(table, exc) from exc
        return out

    def count(self, table: str) -> int:
        """The number of keys in ``table``."""
        env, db = self._env_db(table)
        try:
            with env.begin() as txn:
                return int(txn.stat(db)["entries"])
        except lmdb.Error as exc:
            raise _read_error(table, exc) from exc

    def usage(self) -> StorageUsage:
        """Map size, pages in use, the ceiling (the map's, or the disk's when that is less),
        their ratio and the entries of every table. One statvfs and one read transaction."""
        env = self._live_env()
        try:
            info = env.info()
            used = (int(info["last_pgno"]) + 1) * int(env.stat()["psize"])
            with env.begin() as txn:
                entries = {name: int(txn.stat(db)["entries"]) for name, db in self._dbs.items()}
        except lmdb.Error as exc:
            msg = f"cannot read usage of {self.path}: {exc}"
            raise StorageError(msg) from exc
        try:
            disk = os.statvfs(self.path)
            disk_free: int | None = disk.f_bavail * disk.f_frsize
        except OSError:
            disk_free = None
        ceiling = self._max_map_size
        disk_bound = disk_free is not None and used + disk_free < ceiling
        if disk_bound and disk_free is not None:
            ceiling = used + disk_free
        return StorageUsage(
            map_size=self._map_size,
            used_bytes=used,
            max_map_size=self._max_map_size,
            ratio=min(1.0, used / ceiling) if ceiling > 0 else 1.0,
            entries=entries,
            ceiling=ceiling,
            disk_free=disk_free,
            disk_bound=disk_bound,
        )

    # ---- the writer's side ------------------------------------------------------------------

    def prepare(self, ops: Sequence[Op]) -> tuple[PreparedOp, ...]:
        """Check and encode ``ops`` for the writer without touching a transaction.

        Raises StorageClosed if closed, StorageError naming the op for an unknown table, a key
        that is not 1..max_key_size bytes, or a value msgpack cannot encode.
        """
        env = self._live_env()
        max_key = env.max_key_size()
        dbs = self._dbs
        if isinstance(ops, Put | Delete):  # one op, not a list of them (it iterates, a tuple)
            msg = f"pass a list of ops, not one op: [{ops!r:.80}]"
            raise StorageError(msg)
        prepared = []
        for op in ops:
            try:
                table, key = op.table, op.key
            except AttributeError:
                msg = f"not a storage op: {op!r:.80}; use Put or Delete"
                raise StorageError(msg) from None
            if table not in dbs:
                msg = f"unknown table {table!r} in {op!r}; tables are {', '.join(TABLES)}"
                raise StorageError(msg)
            if not isinstance(key, bytes) or not 0 < len(key) <= max_key:
                msg = f"key must be 1..{max_key} bytes, got {key!r:.80} in table {table!r}"
                raise StorageError(msg)
            if table == "meta" and key in RESERVED_META_KEYS:
                msg = f"meta key {key!r} is the store's own; pick another key"
                raise StorageError(msg)
            if isinstance(op, Put):
                value: bytes | None = pack(op.value)
            elif isinstance(op, Delete):
                value = None
            else:
                msg = f"not a storage op: {op!r:.80}; use Put or Delete"
                raise StorageError(msg)
            prepared.append(PreparedOp(table, key, value))
        return tuple(prepared)

    def full_error(self) -> StoreFull:
        """The error a write gets when the map is at its ceiling."""
        msg = (
            f"storage is full: {self.path} is at its ceiling of {self._max_map_size} bytes; "
            "free space (purge the DLQ or cache, shorten retention) or raise max_map_size"
        )
        return StoreFull(msg)

    def grow(self) -> bool:
        """Double the map (capped at the ceiling); False if already there. Trio thread only,
        between batches: see the module docstring for why no read transaction is live."""
        new_size = min(self._map_size * 2, self._max_map_size)
        if new_size <= self._map_size:
            return False
        with self._write_lock:
            env = self._live_env()
            try:
                env.set_mapsize(new_size)
            except lmdb.Error as exc:
                msg = f"cannot grow the map of {self.path} to {new_size} bytes: {exc}"
                raise StorageError(msg) from exc
            self._map_size = int(env.info()["map_size"])
        return True

    def commit_group(self, batch: Sequence[Sequence[PreparedOp]]) -> StorageError | None:
        """Apply every request of ``batch`` in ONE write transaction (worker thread only).

        None when committed (durable if sync); otherwise nothing was committed and the result is
        StoreFull (the map is full: grow and retry) or another StorageError."""
        try:
            with self._write_lock:
                if self._env is None:
                    return StorageClosed(f"the store at {self.path} is closed")
                return commit_group(
                    self._env,
                    self._dbs,
                    batch,
                    path=self.path,
                    full_error=self.full_error,
                    applied=HANDOFF.release,
                )
        finally:
            HANDOFF.release()  # whatever happened: the trio thread never waits on a failure

    def commit_isolated(self, batch: Sequence[Sequence[PreparedOp]]) -> list[StorageError | None]:
        """Apply each request of ``batch`` in its own nested transaction under ONE outer write
        transaction (worker thread only), so a failing request fails alone; one commit (one
        fsync) for the lot. Returns one result per request, as ``commit_group``."""
        with self._write_lock:
            if self._env is None:
                return [StorageClosed(f"the store at {self.path} is closed") for _ in batch]
            return commit_isolated(
                self._env, self._dbs, batch, path=self.path, full_error=self.full_error
            )

    # ---- internals --------------------------------------------------------------------------

    def _live_env(self) -> lmdb.Environment:
        if self._env is None:
            msg = f"the store at {self.path} is closed"
            raise StorageClosed(msg)
        return self._env

    def _env_db(self, table: str) -> tuple[lmdb.Environment, lmdb._Database]:
        env = self._live_env()
        try:
            return env, self._dbs[table]
        except KeyError:
            msg = f"unknown table {table!r}; tables are {', '.join(TABLES)}"
            raise StorageError(msg) from None


def _seek_last_at_most(cur: lmdb.Cursor, start: bytes | None) -> bool:
    """Position ``cur`` on the greatest key <= ``start`` (the last key if None)."""
    if start is None:
        return cur.last()
    if not cur.set_range(start):
        return cur.last()
    return True if cur.key() == start else cur.prev()


def _read_error(table: str, exc: lmdb.Error) -> StorageError:
    return StorageError(f"read from table {table!r} failed: {exc}")


def _decode(table: str, key: bytes, raw: bytes) -> Any:
    """``unpack(raw)``; a value that does not decode is RecordDamaged naming table and key."""
    try:
        return unpack(raw)
    except Exception as exc:  # msgpack raises several types (ValueError, UnicodeDecodeError..)
        msg = f"the value of {key[:64]!r} in table {table!r} does not decode ({exc}); damaged?"
        raise RecordDamaged(msg) from exc


def _has_data(path: Path) -> bool:
    """Whether ``path`` holds a data file with pages in it (else there is nothing to walk)."""
    try:
        return (path / "data.mdb").stat().st_size > 0
    except OSError:
        return False


def _release(identity: tuple[int, int], env: lmdb.Environment | None) -> None:
    if env is not None:
        env.close()
    with _open_dirs_lock:
        _open_dirs.discard(identity)
