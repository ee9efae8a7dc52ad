"""The LMDB environment: tables, reads, schema version, boot records, double open."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest
import trio

from claykiln.actors.writer import Writer
from claykiln.storage import (
    SCHEMA_VERSION,
    TABLES,
    Delete,
    Put,
    SchemaError,
    StorageClosed,
    StorageError,
    Store,
    pack,
    uint_key,
)


async def test_put_get_delete_round_trip(store: Store, writer: Writer) -> None:
    """A committed Put is read back decoded; a committed Delete makes get return None."""
    with trio.fail_after(10):
        await writer.write([Put("jobs", b"j1", {"state": "queued", "body": b"\x01"})])
        assert store.get("jobs", b"j1") == {"state": "queued", "body": b"\x01"}
        await writer.write([Delete("jobs", b"j1"), Delete("jobs", b"never-there")])
    assert store.get("jobs", b"j1") is None
    assert store.count("jobs") == 0


async def test_items_forward_reverse_and_limit(store: Store, writer: Writer) -> None:
    """items scans keys >= start ascending, or <= start descending, capped by limit."""
    with trio.fail_after(10):
        await writer.write([Put("jobs_due", uint_key(n), n) for n in (10, 20, 30, 40)])
    assert [v for _, v in store.items("jobs_due")] == [10, 20, 30, 40]
    assert [v for _, v in store.items("jobs_due", uint_key(15), limit=2)] == [20, 30]
    assert [v for _, v in store.items("jobs_due", uint_key(30), reverse=True)] == [30, 20, 10]
    assert [v for _, v in store.items("jobs_due", uint_key(35), reverse=True)] == [30, 20, 10]
    assert [v for _, v in store.items("jobs_due", uint_key(99), reverse=True, limit=1)] == [40]
    assert [v for _, v in store.items("jobs_due", reverse=True, limit=2)] == [40, 30]
    assert store.items("jobs_due", uint_key(5), reverse=True) == []
    assert store.items("jobs_due", uint_key(41)) == []
    assert store.items("jobs_due", limit=0) == []


async def test_tables_are_separate_and_counted(store: Store, writer: Writer) -> None:
    """The same key in two tables holds two values; count and usage see each table."""
    with trio.fail_after(10):
        await writer.write([Put("cache", b"k", "c"), Put("gate", b"k", "g"), Put("gate", b"k2", 1)])
    assert (store.get("cache", b"k"), store.get("gate", b"k")) == ("c", "g")
    assert store.count("gate") == 2
    usage = store.usage()
    assert set(usage.entries) == set(TABLES)
    assert usage.entries["gate"] == 2
    assert usage.entries["cache"] == 1
    assert 0 < usage.used_bytes <= usage.map_size <= usage.max_map_size
    assert usage.ratio == usage.used_bytes / usage.max_map_size


def test_unknown_table_read_is_a_storage_error(store: Store) -> None:
    """Reading a table that does not exist names the table and the valid ones."""
    with pytest.raises(StorageError, match="unknown table 'nope'"):
        store.get("nope", b"k")


def test_invalid_ops_are_refused_before_queueing(store: Store) -> None:
    """prepare rejects unknown tables, bad keys, unencodable values and reserved meta keys."""
    with pytest.raises(StorageError, match="unknown table"):
        store.prepare([Put("nope", b"k", 1)])
    with pytest.raises(StorageError, match=r"key must be 1\.\.511 bytes"):
        store.prepare([Put("jobs", b"", 1)])
    with pytest.raises(StorageError, match="key must be"):
        store.prepare([Delete("jobs", b"x" * 512)])
    with pytest.raises(StorageError, match="key must be"):
        store.prepare([Put("jobs", "text", 1)])  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="not msgpack-encodable"):
        store.prepare([Put("jobs", b"k", object())])
    with pytest.raises(StorageError, match="store's own"):
        store.prepare([Put("meta", b"schema_version", 99)])
    # Ops are named tuples: one op where a list belongs, or something else in the list, is
    # refused by name rather than iterated or failing on an attribute.
    with pytest.raises(StorageError, match="pass a list of ops, not one op"):
        store.prepare(Put("jobs", b"k", 1))  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="pass a list of ops, not one op"):
        store.prepare(Delete("jobs", b"k"))  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="not a storage op"):
        store.prepare([("jobs", b"k", 1)])  # type: ignore[list-item]
    with pytest.raises(StorageError, match="not a storage op"):
        store.prepare([{"table": "jobs"}])  # type: ignore[list-item]


def test_prepare_encodes_each_value_as_pack_does(store: Store) -> None:
    """Prepared values are pack's bytes, deletes carry None, also after a refused value."""
    values = [{"state": "completed", "result": {"status": 200}}, [1, b"\x00"], "x", 7]
    with pytest.raises(StorageError, match="not msgpack-encodable"):
        store.prepare([Put("jobs", b"a", {"half": "packed", "bad": object()})])
    ops = [Put("jobs", bytes([65 + i]), v) for i, v in enumerate(values)]
    prepared = store.prepare([*ops, Delete("jobs_due", b"k")])
    assert [p.value for p in prepared] == [pack(v) for v in values] + [None]
    assert [(p.table, p.key) for p in prepared][-1] == ("jobs_due", b"k")


def test_boot_count_and_id_change_on_every_open(store_path: Path) -> None:
    """Each open records a fresh boot id and a boot count one higher than the last."""
    metas = []
    for _ in range(3):
        opened = Store.open(store_path)
        metas.append(opened.meta)
        opened.close()
    assert [m.boot_count for m in metas] == [1, 2, 3]
    assert len({m.boot_id for m in metas}) == 3
    assert all(m.schema_version == SCHEMA_VERSION for m in metas)


def test_state_directory_is_private(store: Store) -> None:
    """A newly created state directory has mode 0700."""
    assert store.path.stat().st_mode & 0o777 == 0o700


def test_newer_schema_is_refused_with_both_versions_and_the_path(store_path: Path) -> None:
    """A store written by a newer schema raises SchemaError naming both versions and the path."""
    Store.open(store_path).close()
    env = lmdb.open(str(store_path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", pack(SCHEMA_VERSION + 1), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(SchemaError) as raised:
        Store.open(store_path)
    message = str(raised.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"version {SCHEMA_VERSION} that this claykiln supports" in message
    assert str(store_path) in message
    # The refusal released the directory: trying again gives the same error, not 'already open'.
    with pytest.raises(SchemaError):
        Store.open(store_path)


def test_double_open_in_one_process_is_a_clear_error(store: Store) -> None:
    """A second open of an open store raises StorageError; after close it opens again."""
    with pytest.raises(StorageError, match="already open in this process"):
        Store.open(store.path)
    store.close()
    again = Store.open(store.path)
    assert again.meta.boot_count == 2
    again.close()


def test_reads_after_close_raise_storage_closed(store: Store) -> None:
    """Every read on a closed store raises StorageClosed; close is idempotent."""
    store.close()
    store.close()
    for read in (
        lambda: store.get("jobs", b"k"),
        lambda: store.items("jobs"),
        lambda: store.count("jobs"),
        store.usage,
    ):
        with pytest.raises(StorageClosed):
            read()


def test_bad_sizes_are_refused(store_path: Path) -> None:
    """map_size must be positive and not above max_map_size."""
    with pytest.raises(ValueError, match="map_size"):
        Store.open(store_path, map_size=2 << 20, max_map_size=1 << 20)
