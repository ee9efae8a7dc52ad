"""glibc's mmap threshold pinned (daemon/malloc.py): a big block freed does not send the next
ones of its size to the heap, where they fragmented it over an hour's load."""

from __future__ import annotations

import ast
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from claykiln.daemon.malloc import MMAP_THRESHOLD, operator_setting, pin_mmap_threshold

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

# Run in a child: mallopt changes the whole process, and the test process's heap has a history.
PROBE = """
import ctypes, json, sys
from claykiln.daemon.malloc import pin_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else None
big = bytearray(4 << 20)  # mapped on its own (over the 128 KiB start threshold)
del big  # unpinned, this free raises the threshold to 4 MiB
mapped_before = libc.mallinfo2().hblkhd
table = bytearray(2 << 20)  # the size of a table CPython rebuilds now and then
mapped_after = libc.mallinfo2().hblkhd
print(json.dumps({"pinned": pinned, "mapped": mapped_after - mapped_before >= (2 << 20)}))
"""


def probe(mode: str, **env: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@glibc
def test_unpinned_a_freed_big_block_sends_the_next_to_the_heap() -> None:
    """The mechanism the pin removes: glibc's dynamic threshold, raised by a free."""
    assert probe("default") == {"pinned": None, "mapped": False}


@glibc
def test_pinned_big_blocks_stay_mapped_after_a_free() -> None:
    assert probe("pin") == {"pinned": MMAP_THRESHOLD, "mapped": True}


@glibc
def test_the_operators_setting_wins() -> None:
    """MALLOC_MMAP_THRESHOLD_ set: nothing is pinned over it (and glibc applies the operator's
    fixed threshold, so the block is mapped all the same)."""
    assert probe("pin", MALLOC_MMAP_THRESHOLD_="131072") == {"pinned": None, "mapped": True}


def test_operator_setting_names_the_variable() -> None:
    assert operator_setting({}) is None
    assert operator_setting({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "MALLOC_MMAP_THRESHOLD_"
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536"}
    assert operator_setting(tunables) == "GLIBC_TUNABLES"
    assert operator_setting({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None


def test_left_alone_when_the_operator_set_it() -> None:
    assert pin_mmap_threshold(environ={"MALLOC_MMAP_THRESHOLD_": "65536"}) is None


def test_the_daemon_never_builds_a_msgpack_packer_per_value() -> None:
    """With the threshold pinned at 256 KiB, ``msgpack.packb`` (or a ``Packer`` built without a
    ``buf_size``) maps and unmaps a 256 KiB buffer per call (14 us instead of 1). The daemon's
    code packs with storage/codec.py's and the frame encoders' per-thread packers; only the
    bench's load generators, separate processes, may call msgpack.packb."""
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for pkg in ("daemon", "actors", "storage"):
        for path in (root / pkg).rglob("*.py"):
            if path.relative_to(root).parts[:2] == ("daemon", "bench"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                owner = node.func.value
                if not (isinstance(owner, ast.Name) and owner.id == "msgpack"):
                    continue
                name = node.func.attr
                sized = any(kw.arg == "buf_size" for kw in node.keywords)
                if name == "packb" or (name == "Packer" and not sized):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    assert offenders == []
