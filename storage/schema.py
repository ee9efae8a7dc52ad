"""The schema version, table list and boot record kept in the ``meta`` table.

``meta`` reserves four keys: ``schema_version`` (SCHEMA_VERSION, written on first open),
``tables`` (the names of the store's tables, written when a new one is made), ``boot_count`` (+1 on
every open) and ``boot_id`` (a fresh uuid4 hex on every open). Other keys of ``meta`` are free
for the actors. A store with a newer schema is refused, never rewritten. A table the list names
but the store lacks is damage (``StoreDamaged``), never silently made again empty; a table this
build adds (not in the list yet) is created.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import attrs
import lmdb

from claykiln.storage.codec import pack, unpack
from claykiln.storage.errors import SchemaError, StoreDamaged

__all__ = ["RESERVED_META_KEYS", "SCHEMA_VERSION", "TABLES_KEY", "StoreMeta", "initialize"]

SCHEMA_VERSION = 1

_SCHEMA_KEY = b"schema_version"
_BOOT_COUNT_KEY = b"boot_count"
_BOOT_ID_KEY = b"boot_id"
TABLES_KEY = b"tables"  # the same key storage/walk.py reads (it imports nothing of ours)
RESERVED_META_KEYS = frozenset({_SCHEMA_KEY, _BOOT_COUNT_KEY, _BOOT_ID_KEY, TABLES_KEY})


@attrs.frozen
class StoreMeta:
    """What this open recorded in ``meta``; ``boot_id`` is fresh and ``boot_count`` +1 per open.
    ``integrity_seconds``: how long the deep integrity walk took (None: not walked, a new store
    or ``check=False``)."""

    path: Path
    schema_version: int
    boot_id: str
    boot_count: int
    stale_readers_cleared: int
    integrity_seconds: float | None = None


def initialize(
    env: lmdb.Environment,
    path: Path,
    tables: Sequence[str],
    *,
    stale_readers_cleared: int,
    integrity_seconds: float | None = None,
) -> tuple[dict[str, lmdb._Database], StoreMeta]:
    """Check the schema version, open ``tables`` and record this boot, in one write transaction.

    Raises SchemaError (nothing written) if the stored version is not SCHEMA_VERSION, and
    StoreDamaged (nothing written) if a table the store recorded is gone."""
    with env.begin(write=True) as txn:
        has_tables = int(txn.stat(env.open_db(None, txn=txn))["entries"]) > 0
        try:
            meta_db = env.open_db(b"meta", txn=txn, create=not has_tables)
        except lmdb.NotFoundError:
            detail = "the store holds tables but its meta table is gone"
            raise StoreDamaged(path, "table_missing", detail) from None
        raw = txn.get(_SCHEMA_KEY, db=meta_db)
        if raw is None and has_tables and txn.stat(meta_db)["entries"] > 0:
            detail = "the meta table lost its schema version"
            raise StoreDamaged(path, "table_missing", detail)
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
        raw_tables = txn.get(TABLES_KEY, db=meta_db)
        recorded = set(unpack(raw_tables)) if raw_tables is not None else set()
        dbs = {}
        for name in tables:
            try:
                dbs[name] = env.open_db(name.encode(), txn=txn, create=name not in recorded)
            except lmdb.NotFoundError:
                detail = f"table {name!r} is listed in the store's meta but is not in the store"
                raise StoreDamaged(path, "table_missing", detail) from None
        kept = sorted(recorded | set(tables))
        if kept != sorted(recorded):
            txn.put(TABLES_KEY, pack(kept), db=meta_db)
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
        integrity_seconds=integrity_seconds,
    )
    return dbs, meta
