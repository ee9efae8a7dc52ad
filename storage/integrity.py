"""Integrity checks that run before a store is opened: damage becomes ``StoreDamaged``.

LMDB maps the data file and trusts what it reads: a page past the end of a truncated file is a
SIGBUS, a flipped byte in a page can be a fault or a table that silently reads as empty. So
``Store.open`` checks the files first, in two steps, and opens nothing when either fails:

1. ``check_files`` (in process, plain file reads, no mapping): the data file is there when the
   lock file says the store was opened before, it is not zero-length, its two meta pages are
   LMDB meta pages, and the file holds every page the newer meta page claims (the last page
   number and both tree roots). This is what a truncated ``data.mdb`` fails.
2. ``walk_in_child`` (``storage/walk.py`` in a child process): every page and record read,
   record counts checked, small tables' values decoded, the recorded table list checked. A
   child killed by a signal while reading is damage too; the daemon itself never faults.

A store without a data file and without a lock file is new: nothing to check.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from claykiln.storage.errors import StorageError, StoreDamaged

__all__ = ["DATA_FILE", "LOCK_FILE", "check_files", "walk_in_child"]

DATA_FILE: Final = "data.mdb"
LOCK_FILE: Final = "lock.mdb"
WALKER: Final = Path(__file__).with_name("walk.py")

# LMDB's meta page (64-bit builds): the page header (pgno, pad, flags, pages), then MDB_meta:
# magic, version, address, mapsize, the free and main trees' MDB_db records (pad = page size,
# flags, depth, branch/leaf/overflow pages, entries, root), last page number, txnid.
_META = struct.Struct("<QHHI" + "IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_MAGIC: Final = 0xBEEFC0DE
_DATA_VERSION: Final = 1
_P_META: Final = 0x08
_NO_ROOT: Final = 2**64 - 1
_PAGE_SIZES: Final = frozenset(2**n for n in range(9, 17))  # 512 B .. 64 KiB


def check_files(directory: Path) -> None:
    """Check ``directory``'s data file against its own meta pages, reading no page through a
    map. Raises StoreDamaged naming the check; returns quietly for a sound or a new store."""
    data = directory / DATA_FILE
    try:
        size = data.stat().st_size
    except FileNotFoundError:
        if (directory / LOCK_FILE).exists():
            detail = f"{data} is missing but {LOCK_FILE} shows the store was opened before"
            raise StoreDamaged(directory, "data_missing", detail) from None
        return
    except OSError as exc:
        msg = f"cannot inspect {data}: {exc}"
        raise StorageError(msg) from exc
    if size == 0:
        raise StoreDamaged(directory, "zero_length", f"{data} is empty (0 bytes)")
    try:
        with data.open("rb") as file:
            head = file.read(_META.size)
            meta0 = _parse_meta(head)
            psize = meta0["psize"] if meta0 is not None else 0
            if psize in _PAGE_SIZES:
                file.seek(psize)
                meta1 = _parse_meta(file.read(_META.size))
            else:
                meta1 = None
    except OSError as exc:
        msg = f"cannot read {data}: {exc}"
        raise StorageError(msg) from exc
    if meta0 is None or meta1 is None or psize not in _PAGE_SIZES:
        detail = f"{data} ({size} bytes) does not start with two LMDB meta pages"
        raise StoreDamaged(directory, "bad_meta", detail)
    meta = meta0 if meta0["txnid"] >= meta1["txnid"] else meta1
    pages = meta["last_pg"] + 1
    if size < pages * psize:
        detail = (
            f"{data} holds {size} bytes but its meta page (transaction {meta['txnid']}) needs "
            f"{pages} pages of {psize} bytes ({pages * psize} bytes): the file was cut short"
        )
        raise StoreDamaged(directory, "truncated", detail)
    for tree in ("free_root", "main_root"):
        root = meta[tree]
        if root != _NO_ROOT and not 2 <= root <= meta["last_pg"]:
            detail = f"{data}: the meta page's {tree} is page {root}, outside pages 2..{pages - 1}"
            raise StoreDamaged(directory, "bad_meta", detail)


def _parse_meta(raw: bytes) -> dict[str, int] | None:
    if len(raw) < _META.size:
        return None
    fields = _META.unpack(raw)
    flags, magic, version = fields[2], fields[4], fields[5]
    if not flags & _P_META or magic != _MAGIC or version != _DATA_VERSION:
        return None
    return {
        "psize": fields[8],
        "free_root": fields[15],
        "main_root": fields[23],
        "last_pg": fields[24],
        "txnid": fields[25],
    }


def walk_in_child(directory: Path) -> dict[str, Any]:
    """Run the deep walk (storage/walk.py) over ``directory`` in a child process and return its
    verdict (``tables``: records per table, ``seconds``). Blocking.

    Raises StoreDamaged for what the walk found, or when the child was killed by a signal while
    reading (a page LMDB faulted on); StorageError if the child could not run or answered
    nonsense.
    """
    command = [sys.executable, "-I", str(WALKER), str(directory)]
    try:
        done = subprocess.run(command, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        msg = f"cannot run the integrity check of {directory} ({command[0]}): {exc}"
        raise StorageError(msg) from exc
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        detail = f"reading its pages killed the checking process with {name}"
        raise StoreDamaged(directory, "crashed", detail)
    try:
        verdict = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        verdict = None
    if done.returncode != 0 or not isinstance(verdict, dict):
        stderr = done.stderr.decode(errors="replace").strip()[-400:]
        msg = (
            f"the integrity check of {directory} did not run (exit {done.returncode}): "
            f"{stderr or '(nothing on stderr)'}"
        )
        raise StorageError(msg)
    if not verdict.get("ok"):
        raise StoreDamaged(directory, str(verdict.get("check")), str(verdict.get("detail")))
    return verdict
