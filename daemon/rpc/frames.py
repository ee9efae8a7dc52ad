"""The msgpack-rpc frame vocabulary: frame kinds, limits, events, error maps and encoders.

Pure values and functions (no socket, no clock, nothing but msgpack); ``decode.py`` turns bytes
into these events and ``protocol.py`` is the public face of both. ``excerpt`` and ``clamp``
keep a peer's input out of messages past a few dozen characters.
"""

from __future__ import annotations

import threading
from typing import Any, Final

import attrs
import msgpack

__all__ = [
    "EXCERPT_CHARS",
    "FEED_SLICE",
    "MAX_MESSAGE_CHARS",
    "MSGID_MAX",
    "NOTIFICATION",
    "PROTOCOL_VERSION",
    "REQUEST",
    "RESPONSE",
    "Event",
    "Limits",
    "Notification",
    "Request",
    "Response",
    "Violation",
    "clamp",
    "encode_body",
    "encode_notification",
    "encode_request",
    "encode_response",
    "encode_response_body",
    "error_map",
    "excerpt",
]

PROTOCOL_VERSION: Final = 1
REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

MSGID_MAX: Final = 2**32 - 1
# Bytes handed to the unpacker at a time: the most decoding work done between two checks of
# the frame and container budgets and, on the server, between two looks at the turn budget
# (4 KiB of one-byte empty arrays decode in ~0.4 ms).
FEED_SLICE: Final = 4096
EXCERPT_CHARS: Final = 64  # the most of a peer's value a message repeats
MAX_MESSAGE_CHARS: Final = 1024  # the longest error message the protocol layer builds
RETAIN_LIMIT: Final = 1024 * 1024  # a frame longer than this renews the thread's packer
PACKER_BUFFER: Final = 16 * 1024  # the bytes a thread's packer starts with (msgpack's: 256 KiB)


@attrs.frozen
class Limits:
    """What one peer may send; every bound is enforced while decoding.

    ``max_containers`` bounds the arrays and maps in one frame (None: unbounded, as the client
    library reads the daemon's replies); the server's default comes from ``[daemon.limits]``.
    """

    max_frame: int = 1024 * 1024
    max_array_len: int = 10_000
    max_map_len: int = 10_000
    max_depth: int = 32
    max_containers: int | None = None


@attrs.define
class Request:
    """A request frame. Read-only by contract; not frozen because one is built per frame on
    the hot path (a frozen attrs instance costs 0.24 us more, measured)."""

    msgid: int
    method: str
    args: dict[str, Any]


@attrs.frozen
class Response:
    msgid: int
    error: dict[str, Any] | None
    result: Any


@attrs.frozen
class Notification:
    """A notification ``[2, method, params]``: ``args`` is the named-arguments map when
    ``params`` is ``[map]``, else empty (positional params, which msgpack-rpc clients such as
    pynvim send, are kept in ``params``)."""

    method: str
    args: dict[str, Any]
    params: tuple[Any, ...] = ()


@attrs.frozen
class Violation:
    """Input that breaks the protocol: answer with ``code``; close the connection when fatal."""

    code: str
    message: str
    msgid: int | None = None
    fatal: bool = False


Event = Request | Response | Notification | Violation


def error_map(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The wire error map ``{code, message, ...}``; ``None`` extras are left out."""
    out: dict[str, Any] = {"code": code, "message": message}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short rendering of a peer's value for a message or a log line.

    At most ``limit`` characters of a string or bytes (then its length), a container's type and
    size, a scalar's repr: never the whole value, so 1 MB in never becomes megabytes of log.
    """
    if isinstance(value, str | bytes | bytearray):
        if len(value) <= limit:
            return repr(value)
        unit = "chars" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**limit else f"an integer of {value.bit_length()} bits"
    if isinstance(value, list | tuple | dict):
        return f"{type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def clamp(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters (marked), for text that may quote a peer."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... (message cut at {limit} of {len(message)} chars)"


_local = threading.local()


def _packb(obj: Any) -> bytes:
    # One reusable Packer per thread (msgpack.packb builds one per call, with a 256 KiB buffer
    # the daemon's allocator maps and unmaps each time: daemon/malloc.py; per thread because
    # sync clients may encode from several threads at once). A frame over RETAIN_LIMIT renews
    # it: a Packer's buffer stays at the largest size it ever needed. The same rule as
    # storage/codec.py's packers, kept apart because the client library must not import
    # claykiln.storage (it brings lmdb).
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, buf_size=PACKER_BUFFER)
    out: bytes = packer.pack(obj)
    if len(out) > RETAIN_LIMIT:
        _local.packer = None
    return out


def encode_request(msgid: int, method: str, args: dict[str, Any] | None = None) -> bytes:
    return _packb([REQUEST, msgid, method, [args if args is not None else {}]])


def encode_response(msgid: int, error: dict[str, Any] | None, result: Any) -> bytes:
    return _packb([RESPONSE, msgid, error, result])


def encode_body(result: Any) -> bytes:
    """``result`` packed alone, for ``encode_response_body``; raises what msgpack raises."""
    return _packb(result)


def encode_response_body(msgid: int, body: bytes) -> bytes:
    """A success response around an already packed ``body`` (the result's msgpack bytes): one
    shared answer is packed once and framed per request with its msgid."""
    return b"\x94\x01" + _packb(msgid) + b"\xc0" + body


def encode_notification(method: str, args: dict[str, Any] | None = None) -> bytes:
    return _packb([NOTIFICATION, method, [args if args is not None else {}]])
