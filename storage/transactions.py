"""The write transactions the writer actor runs in its worker thread: group and isolated commits.

Pure LMDB work, no locking and no state of its own: ``Store.commit_group`` and
``Store.commit_isolated`` (storage/env.py) hold the store's write lock and hand over the open
environment and its tables. Every LMDB failure comes back as a ``StorageError`` value (never
raised), so one batch's failure reaches exactly the asks it concerns:

- ``commit_group``: every request of the batch in ONE write transaction, one commit (one fsync);
  on failure nothing is committed (``StoreFull`` when the map is full: grow and retry).
- ``commit_isolated``: each request in its own nested transaction under one outer transaction,
  so a failing request fails alone and the others still commit, with one fsync for the lot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lmdb

from claykiln.storage.errors import StorageError, StoreFull, write_failure
from claykiln.storage.ops import PreparedOp

__all__ = ["apply_ops", "commit_group", "commit_isolated"]

Tables = Mapping[str, lmdb._Database]


def apply_ops(txn: lmdb.Transaction, dbs: Tables, ops: Sequence[PreparedOp]) -> None:
    """Put or delete (a None value) each op in ``txn``; raises lmdb errors."""
    for op in ops:
        if op.value is None:
            txn.delete(op.key, db=dbs[op.table])
        else:
            txn.put(op.key, op.value, db=dbs[op.table])


def commit_group(
    env: lmdb.Environment,
    dbs: Tables,
    batch: Sequence[Sequence[PreparedOp]],
    *,
    path: Path,
    full_error: Callable[[], StoreFull],
    applied: Callable[[], None] | None = None,
) -> StorageError | None:
    """Apply every request of ``batch`` in one transaction; None once committed. ``applied`` is
    called once the puts are done, before the commit writes and syncs."""
    txn = env.begin(write=True)
    try:
        for ops in batch:
            apply_ops(txn, dbs, ops)
        if applied is not None:
            applied()
        txn.commit()
    except lmdb.MapFullError:
        txn.abort()
        return full_error()
    except lmdb.Error as exc:
        txn.abort()
        return write_failure(path, exc)
    return None


def commit_isolated(
    env: lmdb.Environment,
    dbs: Tables,
    batch: Sequence[Sequence[PreparedOp]],
    *,
    path: Path,
    full_error: Callable[[], StoreFull],
) -> list[StorageError | None]:
    """Apply each request of ``batch`` in its own nested transaction, one outer commit; one
    result per request (None: committed)."""
    outer = env.begin(write=True)
    results: list[StorageError | None] = []
    try:
        for ops in batch:
            child = env.begin(write=True, parent=outer)
            try:
                apply_ops(child, dbs, ops)
                child.commit()
                results.append(None)
            except lmdb.MapFullError:
                child.abort()
                results.append(full_error())
            except lmdb.Error as exc:
                child.abort()
                results.append(write_failure(path, exc))
        outer.commit()
    except lmdb.MapFullError:
        outer.abort()
        return [full_error() for _ in batch]
    except lmdb.Error as exc:
        outer.abort()
        return [write_failure(path, exc) for _ in batch]
    return results
