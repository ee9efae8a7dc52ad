"""The storage layer's exception tree; nothing lmdb-typed leaves ``claykiln.storage``.

    StorageError            any storage failure (an lmdb error, an invalid write, a closed store)
    ├── StorageFull         the map is at its ceiling (max_map_size); the daemon answers
    │                       ``storage_full``; reads and smaller writes go on
    ├── StorageClosed       the store or its writer is closed or stopped; nothing more is accepted
    └── SchemaError         the environment's schema is not one this build can open

Messages say what was wrong and how to fix it.
"""

from __future__ import annotations

__all__ = ["SchemaError", "StorageClosed", "StorageError", "StorageFull"]


class StorageError(Exception):
    """A storage operation failed; the message names the table, key or path involved."""


class StorageFull(StorageError):
    """The LMDB map reached max_map_size; the write was not committed."""


class StorageClosed(StorageError):
    """The store or its writer is closed (or stopped); the write was not committed."""


class SchemaError(StorageError):
    """The environment's schema version cannot be opened by this build."""
