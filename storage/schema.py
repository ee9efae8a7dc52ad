"""The schema version and boot record kept in the ``meta`` table.

``meta`` reserves three keys: ``schema_version`` (SCHEMA_VERSION, written on first open),
``boot_count`` (+1 on every open) and ``boot_id`` (a fresh uuid4 hex on every open). Other keys
of ``meta`` are free for the actors. A store with a newer schema is refused, never rewritten.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import attrs
import lmdb

from claykiln.storage.codec import pack, unpack
from claykiln.storage.errors import SchemaError

__all__ = ["RESERVED_META_KEYS", "SCHEMA_VERSION", "StoreMeta", "initialize"]

SCHEMA_VERSION = 1

_SCHEMA_KEY = b"schema_version"
_BOOT_COUNT_KEY = b"boot_count"
_BOOT_ID_KEY = b"boot_id"
RESERVED_META_KEYS = frozenset({_SCHEMA_KEY, _BOOT_COUNT_KEY, _BOOT_ID_KEY})


@attrs.frozen
class StoreMeta:
    """What this open recorded in ``meta``; ``boot_id`` is fresh and ``boot_count`` +1 per open."""

    path: Path
    schema_version: int
    boot_id: str
    boot_count: int
    stale_readers_cleared: int


def initialize(
    env: lmdb.Environment, path: Path, tables: Sequence[str], *, stale_readers_cleared: int
) -> tuple[dict[str, lmdb._Database], StoreMeta]:
    """Check the schema version, open ``tables`` and record this boot, in one write transaction.

    Raises SchemaError (nothing written) if the stored version is not SCHEMA_VERSION."""
    with env.begin(write=True) as txn:
        meta_db = env.open_db(b"meta", txn=txn)
        raw = txn.get(_SCHEMA_KEY, db=meta_db)
        version = SCHEMA_VERSION if raw is None else unpack(raw)
        if not isinstance(version, int) or version != SCHEMA_VERSION:
            if isinstance(version, int) and version > SCHEMA_VERSION:
                msg = (
                    f"the store at {path} has schema version {version}, newer than version "
                    f"{SCHEMA_VERSION} that this claykiln supports; upgrade claykiln or point "
                    "state_dir at another directory"
                )
            else:
                msg = (
                    f"the store at {path} has schema version {version!r}, which this claykiln "
                    f"(schema version {SCHEMA_VERSION}) cannot migrate; move the directory aside"
                )
            raise SchemaError(msg)
        dbs = {name: env.open_db(name.encode(), txn=txn) for name in tables}
        raw_count = txn.get(_BOOT_COUNT_KEY, db=meta_db)
        boot_count = (0 if raw_count is None else int(unpack(raw_count))) + 1
        boot_id = uuid.uuid4().hex
        txn.put(_SCHEMA_KEY, pack(SCHEMA_VERSION), db=meta_db)
        txn.put(_BOOT_COUNT_KEY, pack(boot_count), db=meta_db)
        txn.put(_BOOT_ID_KEY, pack(boot_id), db=meta_db)
    meta = StoreMeta(
        path=path,
        schema_version=SCHEMA_VERSION,
        boot_id=boot_id,
        boot_count=boot_count,
        stale_readers_cleared=stale_readers_cleared,
    )
    return dbs, meta
