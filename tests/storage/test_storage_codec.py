"""Codecs: msgpack values round-trip; key helpers sort the way scans expect."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.storage import StorageError, join_key, pack, text_key, uint_key, unpack
from claykiln.storage.codec import PACKING_ERRORS, not_encodable, packer


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


def test_packer_packs_what_pack_packs_and_recovers_from_a_failure() -> None:
    """The thread's reusable packer gives pack's bytes, also right after a value it refused."""
    value = {"a": b"\x00\xff", "b": [1, 2.5, None, True], 7: {"nested": "x"}}
    pack_reused = packer()
    assert pack_reused(value) == pack(value)
    with pytest.raises(PACKING_ERRORS) as caught:
        pack_reused({"first": "kept?", "when": object()})
    assert "not msgpack-encodable" in str(not_encodable(caught.value))
    assert pack_reused(value) == pack(value)  # nothing of the failed value left in its buffer


def test_each_thread_has_its_own_packer() -> None:
    """A packer keeps a buffer, so another thread gets another one (and the same bytes)."""
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(packer()))
    thread.start()
    thread.join(timeout=10)
    assert seen and seen[0] is not packer()
    assert packer() is packer()
    assert seen[0]({"x": 1}) == pack({"x": 1})


def test_join_key_prefix_stays_within_its_parent() -> None:
    """A child key sorts right after its parent prefix and before the next parent."""
    parent = join_key(text_key("job"), b"")
    child = join_key(text_key("job"), text_key("z"))
    sibling = join_key(text_key("job0"), b"")
    assert parent < child < sibling
