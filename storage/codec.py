"""Value and key codecs: values are msgpack, keys are bytes ordered bytewise by LMDB.

``pack`` / ``unpack`` use one fixed msgpack profile (bin type on, str as str, any map key) so
every table decodes the same way; ``packer()`` is the same profile for code that packs many
values (``Store.prepare``: one reusable packer per thread, not one built per value as ``pack``
does). The key helpers build keys whose byte order is the order a scan wants: ``uint_key`` is
big-endian so integers (e.g. due times in microseconds) sort numerically, and ``join_key``
separates parts with a NUL byte.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgpack

from claykiln.storage.errors import StorageError

__all__ = [
    "PACKING_ERRORS",
    "join_key",
    "not_encodable",
    "pack",
    "packer",
    "text_key",
    "uint_key",
    "unpack",
]

_KEY_SEPARATOR = b"\x00"
PACKING_ERRORS = (TypeError, ValueError, OverflowError)
"""What msgpack raises for a value it cannot encode."""


class _ThreadPackers(threading.local):
    """One reusable ``Packer`` per thread (a packer keeps a buffer: never share it between
    threads); building one costs about as much as packing a small record with it."""

    def __init__(self) -> None:
        self.pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack


_packers = _ThreadPackers()


def pack(value: Any) -> bytes:
    """Encode ``value`` as msgpack; raise StorageError if it holds a type msgpack cannot encode."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except PACKING_ERRORS as exc:
        raise not_encodable(exc) from exc


def packer() -> Callable[[Any], bytes]:
    """The calling thread's reusable ``pack``: the same bytes as ``pack`` (msgpack's packer
    resets itself after a failure), but raising what msgpack raises (``PACKING_ERRORS``; turn
    it into pack's StorageError with ``not_encodable``). Ask for it in each call of yours, never
    once per module: the packer belongs to the thread that asked."""
    return _packers.pack


def not_encodable(exc: Exception) -> StorageError:
    """The StorageError ``pack`` raises for a value msgpack could not encode (``exc``)."""
    msg = f"value is not msgpack-encodable ({exc}); store plain dicts, lists, str, bytes, numbers"
    return StorageError(msg)


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
