"""Ways to damage a closed LMDB store on disk, the way a bad disk or a clumsy operator would.

Shared by the storage tests and the end-to-end hardening tests (``tests/`` is on sys.path for
every test through the root conftest). Each helper edits ``data.mdb`` of a store directory that
no process has open, at a place found by content (a key's bytes), so the tests do not depend on
LMDB's page layout beyond the node header it has had since 0.9: ``mn_lo, mn_hi`` (the value's
size, 16 bits each), ``mn_flags``, ``mn_ksize``, then the key, then the value.
"""

from __future__ import annotations

import struct
from pathlib import Path

from claykiln.storage import Put, Store

PAGE = 4096
DATA = "data.mdb"


def seed_store(path: Path, *, breakers: int = 20, jobs: int = 300) -> None:
    """A store at ``path`` with ``breakers`` breaker records (``brk-NNN``) and ``jobs`` job
    records (``job-NNNNNN``, each holding a ``fake_big_node`` of its key for
    ``misdirect_node``), written in one commit so each key is on disk once as a key."""
    store = Store.open(path)
    try:
        ops = [
            Put("breakers", f"brk-{i:03d}".encode(), {"state": "open", "n": i, "pad": "b" * 40})
            for i in range(breakers)
        ]
        ops += [
            Put("jobs", key, {"id": i, "row": {"a": "h" * 60}, "trap": fake_big_node(key)})
            for i in range(jobs)
            for key in [f"job-{i:06d}".encode()]
        ]
        error = store.commit_group([store.prepare(ops)])
        assert error is None, error
    finally:
        store.close()


def _key_offset(path: Path, key: bytes) -> tuple[bytearray, int]:
    data = bytearray((path / DATA).read_bytes())
    first = data.find(key)
    assert first >= 0, f"{key!r} is not in {path / DATA}"
    again = data.find(key, first + 1)  # its own value's trap may repeat it, nothing further
    assert again < 0 or again - first < 256, f"{key!r} is on disk more than once"
    assert data.find(key, max(again, first) + 1) < 0, f"{key!r} is on disk more than once"
    return data, first


def spoil_value(path: Path, key: bytes) -> None:
    """Make the value stored under ``key`` undecodable (its first byte becomes 0xc1, a byte
    msgpack never uses); LMDB still reads it."""
    data, at = _key_offset(path, key)
    (ksize,) = struct.unpack_from("<H", data, at - 2)
    assert ksize == len(key)
    data[at + ksize] = 0xC1
    (path / DATA).write_bytes(data)


def fake_big_node(key: bytes, pgno: int = 2) -> bytes:
    """A leaf node as LMDB lays it out, claiming a ~2 GiB value on overflow page ``pgno``."""
    header = struct.pack("<HHHH", 0xFFFF, 0x7FFF, 0x0001, len(key))  # F_BIGDATA
    return header + key + struct.pack("<Q", pgno)


def misdirect_node(path: Path, key: bytes) -> None:
    """Point the page's slot for ``key`` at the fake node that ``seed_store`` keeps inside that
    record's own value (``fake_big_node``): a reader that trusted it would copy a ~2 GiB value
    starting at page 2 and run off the end of the file."""
    data, at = _key_offset(path, key)
    page = at // PAGE
    node = at - 8 - page * PAGE  # the node's offset inside its page
    (lower,) = struct.unpack_from("<H", data, page * PAGE + 12)
    slots = list(struct.unpack_from(f"<{(lower - 16) // 2}H", data, page * PAGE + 16))
    fake = data.find(fake_big_node(key), at)
    assert node in slots and 0 < fake - at < 256, "seed_store's layout changed"
    struct.pack_into("<H", data, page * PAGE + 16 + 2 * slots.index(node), fake - page * PAGE)
    (path / DATA).write_bytes(data)


def break_page_of(path: Path, key: bytes) -> int:
    """Flip the page-type flags of the page holding ``key`` (LMDB: "Located page was wrong
    type"); returns the page number."""
    data, at = _key_offset(path, key)
    page = at // PAGE
    data[page * PAGE + 10] ^= 0xFF
    (path / DATA).write_bytes(data)
    return page


def truncate(path: Path, pages: int = 1) -> int:
    """Cut the last ``pages`` pages off ``data.mdb``; returns the new size."""
    file = path / DATA
    size = file.stat().st_size - pages * PAGE
    with file.open("r+b") as handle:
        handle.truncate(size)
    return size


def empty(path: Path) -> None:
    """Make ``data.mdb`` zero bytes long (the lock file stays)."""
    (path / DATA).write_bytes(b"")
