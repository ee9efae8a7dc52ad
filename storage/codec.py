"""Value and key codecs: values are msgpack, keys are bytes ordered bytewise by LMDB.

``pack`` / ``unpack`` use one fixed msgpack profile (bin type on, str as str, any map key) so
every table decodes the same way; ``packb`` is ``pack`` raising what msgpack raises, for callers
with an error of their own. Both pack with the calling thread's reusable ``Packer``, not one
built per value as ``msgpack.packb`` does: building one costs more than packing a small record,
and it allocates a 256 KiB buffer, which the daemon's C allocator maps and unmaps each time
(daemon/malloc.py: 14 us a value instead of 1). A value packed to more than ``RETAIN_LIMIT``
bytes renews the thread's packer, whose buffer would otherwise stay at the largest size it ever
needed. The key helpers build keys whose byte order is the order a scan wants: ``uint_key`` is
big-endian so integers (e.g. due times in microseconds) sort numerically, and ``join_key``
separates parts with a NUL byte.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

import msgpack

from claykiln.storage.errors import StorageError

__all__ = [
    "PACKING_ERRORS",
    "RETAIN_LIMIT",
    "join_key",
    "not_encodable",
    "pack",
    "packb",
    "text_key",
    "uint_key",
    "unpack",
]

_KEY_SEPARATOR = b"\x00"
PACKING_ERRORS = (TypeError, ValueError, OverflowError)
"""What msgpack raises for a value it cannot encode."""


RETAIN_LIMIT: Final = 1024 * 1024
"""A value packed to more bytes than this renews the thread's packer (msgpack's ``Packer`` keeps
its buffer at the largest size it ever needed: a thread that once packed a 10 MB answer would
hold 10 MB for the rest of its life). Under it the buffer is kept: a fresh one grown to 100 KB
costs ~60 us in reallocations and page faults, a kept one ~8 us."""


PACKER_BUFFER: Final = 16 * 1024
"""The bytes a thread's packer starts with (msgpack's default is 256 KiB; it grows as needed)."""


def _new_packer() -> Callable[[Any], bytes]:
    packer = msgpack.Packer(use_bin_type=True, buf_size=PACKER_BUFFER)
    return packer.pack  # type: ignore[no-any-return]


class _ThreadPackers(threading.local):
    """One reusable ``Packer`` per thread (a packer keeps a buffer: never share it between
    threads)."""

    def __init__(self) -> None:
        self.pack = _new_packer()


_packers = _ThreadPackers()


def packb(value: Any) -> bytes:
    """Encode ``value`` as msgpack (``pack``'s bytes) with the calling thread's reusable packer,
    raising what msgpack raises for a value it cannot encode (``PACKING_ERRORS``; msgpack's
    packer resets itself after a failure)."""
    packers = _packers
    out = packers.pack(value)
    if len(out) > RETAIN_LIMIT:
        packers.pack = _new_packer()
    return out


def pack(value: Any) -> bytes:
    """Encode ``value`` as msgpack; raise StorageError if it holds a type msgpack cannot encode."""
    try:
        return packb(value)
    except PACKING_ERRORS as exc:
        raise not_encodable(exc) from exc


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
