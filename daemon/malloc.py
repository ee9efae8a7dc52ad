"""The C allocator's large-block threshold, pinned so a long-running daemon does not fragment.

glibc's ``malloc`` serves a block of ``M_MMAP_THRESHOLD`` bytes or more (128 KiB at start) with
its own ``mmap`` and gives it back to the kernel when it is freed. The threshold is dynamic:
freeing such a block raises it to that block's size, so later blocks of that size come from the
heap instead. CPython reallocates a few big tables all its life: the table of interned strings
(1.9 MB in this daemon) is rebuilt every few minutes under load, because msgpack interns the map
keys of every frame it decodes and those strings come and go. Once the threshold had risen,
each rebuilt table went on top of the heap, small blocks took the hole the old one left, and
the heap grew by ~1.9 MB at every rebuild with as much of it free (an hour's mixed load: 4 MB
free in a 18.7 MB heap after 18 minutes, RssAnon up 4.7 MB; docs/performance.md, "Memory over
an hour").

``pin_mmap_threshold`` sets the threshold with ``mallopt``, which also turns the dynamic
adjustment off: blocks of ``MMAP_THRESHOLD`` bytes or more are always mapped and unmapped, and
the heap's top is trimmed past glibc's default 128 KiB. An operator's own setting
(``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``) wins: it is
left alone. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Mapping
from typing import Final

__all__ = ["MMAP_THRESHOLD", "operator_setting", "pin_mmap_threshold"]

M_MMAP_THRESHOLD: Final = -3  # malloc.h
MMAP_THRESHOLD: Final = 256 * 1024
"""Blocks this size or larger are mapped on their own (glibc's default start is 128 KiB; the
hot path's frames, replies and socket reads are all well under it). Each one then costs an
``mmap`` and a ``munmap``: code on the hot path must not allocate such a block per request.
``msgpack.packb`` does (its ``Packer`` starts with a 256 KiB buffer: 14 us a call pinned, 2 us
not); the daemon packs with storage/codec.py's per-thread packers instead."""


def operator_setting(environ: Mapping[str, str]) -> str | None:
    """The operator's own mmap threshold setting in ``environ`` (the variable that sets it), or
    None."""
    if "MALLOC_MMAP_THRESHOLD_" in environ:
        return "MALLOC_MMAP_THRESHOLD_"
    if "glibc.malloc.mmap_threshold" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def pin_mmap_threshold(
    threshold: int = MMAP_THRESHOLD, environ: Mapping[str, str] | None = None
) -> int | None:
    """Pin glibc's mmap threshold at ``threshold`` bytes; the threshold set, or None when it
    was left alone (not glibc, or the operator set it: see the module docstring)."""
    environ = os.environ if environ is None else environ
    if platform.libc_ver()[0] != "glibc" or operator_setting(environ) is not None:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return threshold if mallopt(M_MMAP_THRESHOLD, threshold) == 1 else None
