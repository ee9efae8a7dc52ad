"""The storage layer's exception tree; nothing lmdb-typed leaves ``claykiln.storage``.

    StorageError            any storage failure (an lmdb error, an invalid write, a closed store)
    ├── StoreFull         the map is at its ceiling (max_map_size), or the disk under it is
    │                       full; the daemon answers ``storage_full``; reads go on
    ├── StorageClosed       the store or its writer is closed or stopped; nothing more is accepted
    └── SchemaError         the environment's schema is not one this build can open

Messages say what was wrong and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["SchemaError", "StorageClosed", "StorageError", "StoreFull", "write_failure"]

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
