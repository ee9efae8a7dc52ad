"""claykiln.storage: the LMDB environment, its tables and codecs, (the group-commit writer actor
that drives it is ``claykiln.actors.writer``).

The only package that imports lmdb; nothing lmdb-typed leaves it (see storage/errors.py).
"""

from claykiln.storage.codec import join_key, pack, text_key, uint_key, unpack
from claykiln.storage.env import (
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    TABLES,
    StorageUsage,
    Store,
)
from claykiln.storage.errors import (
    RecordDamaged,
    SchemaError,
    StorageClosed,
    StorageError,
    StoreDamaged,
    StoreFull,
)
from claykiln.storage.ops import Delete, Encoded, Op, PreparedOp, Put
from claykiln.storage.schema import SCHEMA_VERSION, StoreMeta

__all__ = [
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MAP_SIZE",
    "SCHEMA_VERSION",
    "TABLES",
    "Delete",
    "Encoded",
    "Op",
    "PreparedOp",
    "Put",
    "RecordDamaged",
    "SchemaError",
    "StorageClosed",
    "StorageError",
    "StorageUsage",
    "Store",
    "StoreDamaged",
    "StoreFull",
    "StoreMeta",
    "join_key",
    "pack",
    "text_key",
    "uint_key",
    "unpack",
]
