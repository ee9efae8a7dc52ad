"""Value and key codecs: values are msgpack, keys are bytes ordered bytewise by LMDB.

``pack`` / ``unpack`` use one fixed msgpack profile (bin type on, str as str, any map key) so
every table decodes the same way. The key helpers build keys whose byte order is the order a
scan wants: ``uint_key`` is big-endian so integers (e.g. due times in microseconds) sort
numerically, and ``join_key`` separates parts with a NUL byte.
"""

from __future__ import annotations

from typing import Any

import msgpack

from claykiln.storage.errors import StorageError

__all__ = ["join_key", "pack", "text_key", "uint_key", "unpack"]

_KEY_SEPARATOR = b"\x00"


def pack(value: Any) -> bytes:
    """Encode ``value`` as msgpack; raise StorageError if it holds a type msgpack cannot encode."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        msg = (
            f"value is not msgpack-encodable ({exc}); store plain dicts, lists, str, bytes, numbers"
        )
        raise StorageError(msg) from exc


def unpack(raw: bytes) -> Any:
    """Decode a value written by ``pack``."""
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def text_key(text: str) -> bytes:
    """A key from a string (UTF-8)."""
    return text.encode("utf-8")


def uint_key(number: int, width: int = 8) -> bytes:
    """A big-endian key of ``width`` bytes, so byte order is numeric order.

    Raises StorageError if ``number`` is negative or does not fit in ``width`` bytes.
    """
    try:
        return number.to_bytes(width, "big", signed=False)
    except OverflowError as exc:
        msg = f"key {number} does not fit an unsigned {width}-byte key; use a wider key"
        raise StorageError(msg) from exc


def join_key(*parts: bytes) -> bytes:
    """Parts joined by a NUL byte; scans by a prefix ``join_key(a, b"")`` stay within ``a``."""
    return _KEY_SEPARATOR.join(parts)
