"""Store.open checks the files before it maps a page: damage is StoreDamaged, never a fault or a
silently empty table; a value that does not decode is RecordDamaged at read time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import store_damage

from claykiln.storage import (
    StorageError,
    Store,
    StoreDamaged,
    integrity,
    pack,
    schema,
    unpack,
    walk,
)
from claykiln.storage.errors import RecordDamaged
from claykiln.storage.integrity import check_files, walk_in_child


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    store_damage.seed_store(path)
    return path


def test_sound_store_reopens_with_every_record(seeded: Path) -> None:
    """A sound store passes both checks and says how long the walk took."""
    store = Store.open(seeded)
    try:
        assert store.count("breakers") == 20
        assert store.count("jobs") == 300
        assert store.meta.integrity_seconds is not None
    finally:
        store.close()


def test_new_store_is_not_walked(tmp_path: Path) -> None:
    """A directory without files is a new store: nothing to check, nothing walked."""
    store = Store.open(tmp_path / "new")
    try:
        assert store.meta.integrity_seconds is None
    finally:
        store.close()


def test_walk_counts_records_per_table(seeded: Path) -> None:
    """The child's verdict lists every table with its record count."""
    verdict = walk_in_child(seeded)
    assert verdict["ok"] is True
    assert verdict["tables"]["breakers"] == 20
    assert verdict["tables"]["jobs"] == 300


def test_zero_length_data_file_is_damage(seeded: Path) -> None:
    """A zero-length data.mdb is not a new store: StoreDamaged, and the file is left as is."""
    store_damage.empty(seeded)
    with pytest.raises(StoreDamaged) as damaged:
        Store.open(seeded)
    assert damaged.value.check == "zero_length"
    assert (seeded / "data.mdb").stat().st_size == 0


def test_missing_data_file_beside_its_lock_file_is_damage(seeded: Path) -> None:
    """data.mdb deleted from a store that was opened before: StoreDamaged, not a fresh store."""
    (seeded / "data.mdb").unlink()
    with pytest.raises(StoreDamaged) as damaged:
        Store.open(seeded)
    assert damaged.value.check == "data_missing"
    assert not (seeded / "data.mdb").exists()


@pytest.mark.parametrize("pages", [1, 12])
def test_truncated_data_file_is_damage_before_any_page_is_mapped(seeded: Path, pages: int) -> None:
    """A data file cut short by one page or many: StoreDamaged naming both sizes."""
    size = store_damage.truncate(seeded, pages)
    with pytest.raises(StoreDamaged) as damaged:
        check_files(seeded)
    assert damaged.value.check == "truncated"
    assert f"holds {size} bytes" in damaged.value.detail


def test_truncated_store_open_is_an_error_not_a_sigbus(seeded: Path) -> None:
    """In a fresh interpreter, opening a truncated store exits with the error (the old code died
    of SIGBUS, exit -7)."""
    store_damage.truncate(seeded, 1)
    code = (
        "import sys\nfrom claykiln.storage import Store, StoreDamaged\n"
        "try:\n    Store.open(sys.argv[1])\nexcept StoreDamaged as e:\n"
        "    print(e.check); sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(seeded)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "truncated"


def test_garbage_meta_pages_are_damage(seeded: Path) -> None:
    """A data file that does not start with LMDB meta pages is StoreDamaged (bad_meta)."""
    data = seeded / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[16:20] = b"\x00\x00\x00\x00"  # the first meta page's magic
    data.write_bytes(raw)
    with pytest.raises(StoreDamaged) as damaged:
        Store.open(seeded)
    assert damaged.value.check == "bad_meta"


def test_page_of_wrong_type_in_a_table_is_damage(seeded: Path) -> None:
    """A flipped byte in the header of a breakers page: StoreDamaged, not an empty table."""
    store_damage.break_page_of(seeded, b"brk-007")
    with pytest.raises(StoreDamaged) as damaged:
        Store.open(seeded)
    assert damaged.value.check in ("unreadable", "count_mismatch")


def test_slot_pointing_into_a_value_is_damage(seeded: Path) -> None:
    """A page slot redirected to a fake node claiming a 2 GiB value: StoreDamaged, no fault."""
    store_damage.misdirect_node(seeded, b"job-000123")
    with pytest.raises(StoreDamaged) as damaged:
        Store.open(seeded)
    assert damaged.value.check in ("unreadable", "crashed")


def test_a_walk_killed_by_a_fault_is_damage(
    seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checking child that dies of SIGBUS (what reading a bad page does) is damage, and the
    caller lives on to say so."""
    faulting = tmp_path / "walk.py"
    faulting.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGBUS)\n")
    monkeypatch.setattr(integrity, "WALKER", faulting)
    with pytest.raises(StoreDamaged) as damaged:
        Store.open(seeded)
    assert damaged.value.check == "crashed"
    assert "SIGBUS" in damaged.value.detail


def test_a_walk_that_cannot_run_is_a_storage_error(
    seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checking child that fails without a verdict is StorageError quoting its stderr, not
    damage (nothing says the store is bad)."""
    broken = tmp_path / "walk.py"
    broken.write_text("raise SystemExit('no lmdb here')\n")
    monkeypatch.setattr(integrity, "WALKER", broken)
    with pytest.raises(StorageError, match="no lmdb here") as failed:
        Store.open(seeded)
    assert not isinstance(failed.value, StoreDamaged)


def test_undecodable_value_in_a_small_table_is_damage(seeded: Path) -> None:
    """A breaker record that no longer decodes fails the walk (small tables are decoded)."""
    store_damage.spoil_value(seeded, b"brk-003")
    with pytest.raises(StoreDamaged) as damaged:
        Store.open(seeded)
    assert damaged.value.check == "undecodable"
    assert "breakers" in damaged.value.detail


def test_undecodable_value_read_unchecked_is_record_damaged(seeded: Path) -> None:
    """Without the walk, reading the spoiled value is RecordDamaged naming table and key."""
    store_damage.spoil_value(seeded, b"brk-003")
    store = Store.open(seeded, check=False)
    try:
        with pytest.raises(RecordDamaged, match="breakers"):
            store.get("breakers", b"brk-003")
        with pytest.raises(RecordDamaged):
            store.items("breakers")
        assert store.get("breakers", b"brk-004") is not None
    finally:
        store.close()


def test_recorded_table_gone_is_damage_not_a_fresh_table(seeded: Path) -> None:
    """A table the store's meta lists but the store lacks is StoreDamaged, by the walk and by
    the open itself, and is never created again empty."""
    env = lmdb.open(str(seeded), max_dbs=32)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"breakers", txn=txn), delete=True)
    env.close()
    with pytest.raises(StoreDamaged) as damaged:
        walk_in_child(seeded)
    assert damaged.value.check == "table_missing"
    with pytest.raises(StoreDamaged) as opened:
        Store.open(seeded, check=False)
    assert opened.value.check == "table_missing"
    env = lmdb.open(str(seeded), max_dbs=32, readonly=True)
    with env.begin() as txn, pytest.raises(lmdb.NotFoundError):
        env.open_db(b"breakers", txn=txn, create=False)
    env.close()


def test_a_table_new_in_this_build_is_created(seeded: Path) -> None:
    """A store written before a table existed gets it (the recorded list grows)."""
    env = lmdb.open(str(seeded), max_dbs=32)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        tables = [t for t in unpack(txn.get(b"tables", db=meta)) if t != "cache_age"]
        txn.put(b"tables", pack(tables), db=meta)
        txn.drop(env.open_db(b"cache_age", txn=txn), delete=True)
    env.close()
    store = Store.open(seeded)
    try:
        assert store.count("cache_age") == 0
        assert "cache_age" in store.get("meta", b"tables")
    finally:
        store.close()


def test_a_store_open_elsewhere_is_checked_without_disturbing_it(seeded: Path) -> None:
    """The walk reads as an ordinary LMDB reader: a store open in another process checks sound."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, lmdb; e = lmdb.open(sys.argv[1], max_dbs=32); "
            "print('open', flush=True); sys.stdin.read()",
            str(seeded),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"open\n"
        assert walk_in_child(seeded)["ok"] is True
    finally:
        holder.kill()
        holder.wait(10)
    assert os.path.exists(seeded / "lock.mdb")


def test_walk_reads_the_table_list_where_the_schema_writes_it() -> None:
    """walk.py keeps its own copy of the meta key naming the tables; it matches the schema's."""
    assert walk.TABLES_KEY == schema.TABLES_KEY
    assert walk.META_TABLE == b"meta"
