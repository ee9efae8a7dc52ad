"""The storage layer's exception tree; nothing lmdb-typed leaves ``claykiln.storage``.

    StorageError            any storage failure (an lmdb error, an invalid write, a closed store)
    ├── StoreFull         the map is at its ceiling (max_map_size), or the disk under it is
    │                       full; the daemon answers ``storage_full``; reads go on
    ├── StorageClosed       the store or its writer is closed or stopped; nothing more is accepted
    ├── SchemaError         the environment's schema is not one this build can open
    ├── StoreDamaged        the files fail an integrity check at open (truncated, zero-length,
    │                       unreadable pages or tables); nothing was opened or written
    └── RecordDamaged       one stored value cannot be decoded (read side only)

Messages say what was wrong and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = [
    "RecordDamaged",
    "SchemaError",
    "StorageClosed",
    "StorageError",
    "StoreDamaged",
    "StoreFull",
    "write_failure",
]

# Below this many free bytes on the store's filesystem, a failed commit is blamed on a full
# disk (LMDB reports ENOSPC from its data-file writes as a bare "Input/output error").
DISK_FULL_BYTES: Final = 1024 * 1024


class StorageError(Exception):
    """A storage operation failed; the message names the table, key or path involved."""


class StoreFull(StorageError):
    """The LMDB map reached max_map_size; the write was not committed."""


class StorageClosed(StorageError):
    """The store or its writer is closed (or stopped); the write was not committed."""


class SchemaError(StorageError):
    """The environment's schema version cannot be opened by this build."""


class StoreDamaged(StorageError):
    """The store's files failed an integrity check before the store was opened.

    ``path``: the file or directory found damaged; ``check``: which check failed (a stable
    word: ``zero_length``, ``data_missing``, ``truncated``, ``bad_meta``, ``unreadable``,
    ``crashed``, ``count_mismatch``, ``undecodable``, ``table_missing``); ``detail``: what it
    saw. The store was not opened and nothing was written to it.
    """

    def __init__(self, path: Path, check: str, detail: str) -> None:
        msg = (
            f"the store at {path} is damaged ({check}: {detail}); it was not opened and "
            "nothing was written to it. Keep it aside and start fresh, or restore a copy: "
            "docs/operations.md, 'A damaged store'"
        )
        super().__init__(msg)
        self.path = path
        self.check = check
        self.detail = detail


class RecordDamaged(StorageError):
    """A stored value could not be decoded (a damaged page, or a value this build cannot read);
    the message names the table and the key."""


def write_failure(path: Path, detail: object) -> StorageError:
    """The error for a failed write transaction: ``StoreFull`` naming the disk when the
    filesystem under ``path`` is (nearly) out of space, else a plain ``StorageError``."""
    try:
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < DISK_FULL_BYTES:
        msg = (
            f"storage is full: the disk holding {path} has {free} bytes free ({detail}); "
            "free disk space there -- reads go on meanwhile"
        )
        return StoreFull(msg)
    return StorageError(f"write transaction on {path} failed: {detail}")
