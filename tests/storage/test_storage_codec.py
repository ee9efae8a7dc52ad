"""Codecs: msgpack values round-trip; key helpers sort the way scans expect."""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.storage import StorageError, codec, join_key, pack, text_key, uint_key, unpack
from claykiln.storage.codec import PACKING_ERRORS, RETAIN_LIMIT, not_encodable, packb


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_uint_key_byte_order_is_numeric_order(a: int, b: int) -> None:
    """Big-endian keys compare bytewise exactly as their integers compare."""
    assert (uint_key(a) < uint_key(b)) == (a < b)


def test_uint_key_rejects_negative_and_oversized() -> None:
    """A number that does not fit the key width is refused with StorageError."""
    with pytest.raises(StorageError, match="does not fit"):
        uint_key(-1)
    with pytest.raises(StorageError, match="does not fit"):
        uint_key(2**16, width=2)


def test_values_round_trip_with_bytes_str_and_int_map_keys() -> None:
    """pack/unpack keep bytes as bytes, str as str and non-str map keys."""
    value = {"a": b"\x00\xff", "b": [1, 2.5, None, True], 7: {"nested": "x"}}
    assert unpack(pack(value)) == value


def test_unencodable_value_is_a_storage_error() -> None:
    """A value msgpack cannot encode raises StorageError naming the problem."""
    with pytest.raises(StorageError, match="not msgpack-encodable"):
        pack({"when": object()})


def test_packb_packs_what_msgpack_packs_and_recovers_from_a_failure() -> None:
    """The thread's reusable packer gives msgpack's bytes, also right after a value it refused
    (raising what msgpack raises, which ``pack`` turns into a StorageError)."""
    value = {"a": b"\x00\xff", "b": [1, 2.5, None, True], 7: {"nested": "x"}}
    expected = msgpack.packb(value, use_bin_type=True)
    assert packb(value) == pack(value) == expected
    with pytest.raises(PACKING_ERRORS) as caught:
        packb({"first": "kept?", "when": object()})
    assert "not msgpack-encodable" in str(not_encodable(caught.value))
    assert packb(value) == expected  # nothing of the failed value left in its buffer


def test_each_thread_has_its_own_packer() -> None:
    """A packer keeps a buffer, so another thread gets another one (and the same bytes)."""
    seen: list[Any] = []

    def in_thread() -> None:
        seen.append((codec._packers.pack, pack({"x": 1})))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(timeout=10)
    assert seen
    theirs, packed = seen[0]
    assert theirs is not codec._packers.pack
    assert packed == pack({"x": 1})


@pytest.fixture
def traced() -> Iterator[Callable[[], tuple[int, int]]]:
    """Python's allocations traced (msgpack's buffers come from PyMem): a function giving
    (bytes allocated now, peak since the last call) relative to the start."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]

    def read() -> tuple[int, int]:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        return current - base, peak - base

    try:
        yield read
    finally:
        tracemalloc.stop()


def test_a_small_value_is_packed_without_a_fresh_buffer(
    traced: Callable[[], tuple[int, int]],
) -> None:
    """msgpack.packb allocates a 256 KiB buffer per call (which the daemon's pinned allocator
    maps and unmaps: daemon/malloc.py); pack reuses the thread's packer, so packing a small
    record peaks at a few KiB."""
    record = {"state": 2, "op": "push_row", "fp": "f" * 64, "sent": {"x": [1, 2, 3]}}
    pack(record)  # the thread's packer exists
    traced()
    for _ in range(10):
        pack(record)
        packb(record)
    _, peak = traced()
    assert peak < 16 * 1024


def test_a_big_value_does_not_stay_in_the_threads_packer(
    traced: Callable[[], tuple[int, int]],
) -> None:
    """msgpack's Packer keeps its buffer at the largest size it needed; a value over
    RETAIN_LIMIT renews the thread's packer, so its megabytes are freed with the result."""
    pack({"x": 1})
    traced()
    small = codec._packers.pack
    packb(b"z" * (RETAIN_LIMIT - 16))  # under the limit: the same packer goes on
    assert codec._packers.pack is small
    big = pack([b"y" * 1024] * 4096)  # 4 MiB
    assert len(big) > 4 * 1024 * 1024
    assert codec._packers.pack is not small
    del big, small  # the result, and this test's hold on the packer that built it
    now, peak = traced()
    assert peak > 4 * 1024 * 1024  # it was built
    assert now < 256 * 1024  # and nothing of it is kept
    assert unpack(pack({"after": True})) == {"after": True}


def test_join_key_prefix_stays_within_its_parent() -> None:
    """A child key sorts right after its parent prefix and before the next parent."""
    parent = join_key(text_key("job"), b"")
    child = join_key(text_key("job"), text_key("z"))
    sibling = join_key(text_key("job0"), b"")
    assert parent < child < sibling
