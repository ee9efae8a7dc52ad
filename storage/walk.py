"""The deep integrity walk of an LMDB store, run in a child process by storage/integrity.py.

Self-contained on purpose (the standard library, lmdb and msgpack, never ``claykiln``): the
parent runs this file by path (``python -I walk.py DIR``), so the child starts in ~0.1 s and a
page that makes LMDB fault (SIGBUS, SIGSEGV: it trusts the sizes and offsets it reads) kills the
child, not the daemon. The parent reads a crash as damage.

What it reads, all in one read transaction:

1. every page of every table, as LMDB's compacting copy walks them (``copyfd`` to /dev/null:
   branch, leaf and overflow pages, each checked for its type and bounds by LMDB; ~45 ms for
   a million records);
2. every table's records through a cursor, keys and values copied out, counted against the
   count the table's own record claims;
3. every value decoded (msgpack) in tables of up to ``DECODE_LIMIT`` records (the breaker,
   gate, quota and meta records are all decoded; a million-job table is read, not decoded);
4. the tables ``meta`` says the store had (``meta/tables``, written at every open) against the
   tables present: one missing is damage, never a fresh empty table.

Prints one JSON line: ``{"ok": true, "tables": {name: records}, "seconds": s}`` or
``{"ok": false, "check": word, "detail": text}``; exits 0 either way (2 for bad usage).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Final

import lmdb
import msgpack

__all__ = ["DECODE_LIMIT", "META_TABLE", "TABLES_KEY", "walk"]

DECODE_LIMIT: Final = 10_000
META_TABLE: Final = b"meta"
TABLES_KEY: Final = b"tables"  # meta: the names of the tables this store was made with
MAX_DBS: Final = 64  # room for every named table a store may hold, ours or a newer build's


def walk(directory: str) -> dict[str, Any]:
    """Read every page and record of the store in ``directory``; the verdict as a JSON map.

    May kill the process (a fault reading a damaged page): run it in a child.
    """
    started = time.monotonic()
    try:
        env = lmdb.open(
            directory, readonly=True, lock=True, max_dbs=MAX_DBS, subdir=True, readahead=False
        )
    except lmdb.Error as exc:
        return _damaged("unreadable", f"LMDB cannot open it: {exc}")
    try:
        verdict = _walk_env(env)
    finally:
        env.close()
    verdict.setdefault("seconds", round(time.monotonic() - started, 3))
    return verdict


def _walk_env(env: lmdb.Environment) -> dict[str, Any]:
    with open(os.devnull, "wb") as sink:
        try:
            env.copyfd(sink.fileno(), compact=True)
        except lmdb.Error as exc:
            return _damaged("unreadable", f"walking its pages failed: {exc}")
    counts: dict[str, int] = {}
    with env.begin(buffers=False) as txn:
        try:
            names = [key for key, _ in txn.cursor()]
        except lmdb.Error as exc:
            return _damaged("unreadable", f"listing its tables failed: {exc}")
        for raw_name in names:
            name = raw_name.decode("utf-8", "replace")
            try:
                db = env.open_db(raw_name, txn=txn, create=False)
            except lmdb.Error as exc:
                return _damaged("unreadable", f"table {name!r} cannot be opened: {exc}")
            verdict = _walk_table(txn, db, name, counts)
            if verdict is not None:
                return verdict
        return _check_recorded(txn, env, names) or {"ok": True, "tables": counts}


def _walk_table(
    txn: lmdb.Transaction, db: Any, name: str, counts: dict[str, int]
) -> dict[str, Any] | None:
    try:
        claimed = int(txn.stat(db)["entries"])
        decode = claimed <= DECODE_LIMIT
        seen = 0
        for key, value in txn.cursor(db):
            seen += 1
            if decode:
                try:
                    msgpack.unpackb(value, raw=False, strict_map_key=False)
                except Exception as exc:  # any decoding failure is the same damage
                    detail = f"table {name!r}: the value of key {key[:64]!r} does not decode: {exc}"
                    return _damaged("undecodable", detail)
    except lmdb.Error as exc:
        return _damaged("unreadable", f"reading table {name!r} failed: {exc}")
    if seen != claimed:
        detail = f"table {name!r} says it holds {claimed} records; {seen} could be read"
        return _damaged("count_mismatch", detail)
    counts[name] = seen
    return None


def _check_recorded(
    txn: lmdb.Transaction, env: lmdb.Environment, names: list[bytes]
) -> dict[str, Any] | None:
    """A table that ``meta/tables`` lists but the store lacks is damage."""
    if META_TABLE not in names:
        return None
    meta = env.open_db(META_TABLE, txn=txn, create=False)
    raw = txn.get(TABLES_KEY, db=meta)
    if raw is None:
        return None  # a store made before the list was kept
    recorded = msgpack.unpackb(raw, raw=False)
    present = {name.decode("utf-8", "replace") for name in names}
    missing = sorted(set(recorded) - present) if isinstance(recorded, list) else []
    if missing:
        detail = f"table(s) {', '.join(missing)} are gone from the store's table list"
        return _damaged("table_missing", detail)
    return None


def _damaged(check: str, detail: str) -> dict[str, Any]:
    return {"ok": False, "check": check, "detail": detail}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: walk.py STORE_DIRECTORY", file=sys.stderr)
        return 2
    print(json.dumps(walk(argv[1])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
