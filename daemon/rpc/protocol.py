"""The msgpack-rpc protocol core, sans-I/O: feed bytes in, get events out.

Shared by the server and every client flavor; it never touches a socket or a clock.

Frames (CONTRACT, docs/protocol.md):

- request       ``[0, msgid, method, [args]]``   args is one map of named arguments
- response      ``[1, msgid, error, result]``    error is nil or ``{code, message, ...}``
- notification  ``[2, method, [args]]``

A ``FrameParser`` turns a byte stream into ``Request`` / ``Response`` / ``Notification`` events and
``Violation`` events for input that breaks the protocol. A violation carries the msgid when one
could be read (the peer can be answered and the connection kept) and ``fatal=True`` when the
stream can no longer be trusted (undecodable bytes, an oversized frame): the owner then answers
what it can and closes that connection only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final

import attrs
import msgpack

__all__ = [
    "NOTIFICATION",
    "PROTOCOL_VERSION",
    "REQUEST",
    "RESPONSE",
    "Event",
    "FrameParser",
    "Limits",
    "Notification",
    "Request",
    "Response",
    "Violation",
    "encode_notification",
    "encode_request",
    "encode_response",
    "error_map",
]

PROTOCOL_VERSION: Final = 1
REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

MSGID_MAX: Final = 2**32 - 1
FEED_SLICE: Final = 65536  # bytes handed to the unpacker at a time


@attrs.frozen
class Limits:
    """What one peer may send; every bound is enforced while decoding, before allocation."""

    max_frame: int = 1024 * 1024
    max_array_len: int = 10_000
    max_map_len: int = 10_000
    max_depth: int = 32


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
    method: str
    args: dict[str, Any]


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


_local = threading.local()


def _packb(obj: Any) -> bytes:
    # One reusable Packer per thread (~0.2 us less than msgpack.packb building one per call;
    # per thread because sync clients may encode from several threads at once).
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)  # type: ignore[no-any-return]


def encode_request(msgid: int, method: str, args: dict[str, Any] | None = None) -> bytes:
    return _packb([REQUEST, msgid, method, [args if args is not None else {}]])


def encode_response(msgid: int, error: dict[str, Any] | None, result: Any) -> bytes:
    return _packb([RESPONSE, msgid, error, result])


def encode_notification(method: str, args: dict[str, Any] | None = None) -> bytes:
    return _packb([NOTIFICATION, method, [args if args is not None else {}]])


def _too_deep(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests containers deeper than ``limit`` (iterative, no recursion).

    (Container map keys never get here: msgpack refuses them as unhashable while decoding.)
    """
    if (
        limit >= 2
        and isinstance(obj, dict)
        and not any(isinstance(v, list | dict) for v in obj.values())
    ):
        return False  # the common case: a flat map of scalars
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((x, depth + 1) for x in children if isinstance(x, list | dict))
    return False


def _msgid_of(frame: list[Any], index: int) -> int | None:
    if len(frame) > index:
        value = frame[index]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MSGID_MAX:
            return value
    return None


def _args_of(raw: Any) -> dict[str, Any] | None:
    """The named-arguments map from ``[args]``; a bare map or an empty list is accepted too."""
    if isinstance(raw, list):
        if len(raw) == 0:
            return {}
        if len(raw) == 1 and isinstance(raw[0], dict):
            raw = raw[0]
        else:
            return None
    if isinstance(raw, dict) and all(isinstance(k, str) for k in raw):
        return raw
    return None


def classify(frame: Any, limits: Limits) -> Event:
    """Turn one decoded msgpack object into an event (pure; exposed for tests)."""
    # Fast path: a well-formed request with a flat args map (nearly every frame). Anything
    # unusual falls through to the full checks below, which name what is wrong.
    if type(frame) is list and len(frame) == 4 and type(frame[0]) is int and frame[0] == REQUEST:
        _, msgid, method, raw = frame
        if (
            type(msgid) is int
            and 0 <= msgid <= MSGID_MAX
            and type(method) is str
            and type(raw) is list
            and len(raw) == 1
        ):
            args = raw[0]
            if type(args) is dict:
                for key, value in args.items():
                    if type(key) is not str or isinstance(value, list | dict):
                        break  # a nested or odd map: the full checks decide
                else:
                    return Request(msgid, method, args)
    if not isinstance(frame, list) or not frame:
        return Violation("bad_request", "a frame must be a msgpack array [type, ...]", fatal=False)
    kind = frame[0]
    if type(kind) is not int:
        return Violation("bad_request", f"unknown frame type {kind!r}; expected 0, 1 or 2")
    if kind == REQUEST:
        msgid = _msgid_of(frame, 1)
        if len(frame) != 4:
            msg = f"a request is [0, msgid, method, [args]] (4 items), got {len(frame)} items"
            return Violation("bad_request", msg, msgid=msgid)
        if msgid is None:
            return Violation("bad_request", "msgid must be an integer in 0..2**32-1")
        method = frame[2]
        if not isinstance(method, str):
            msg = f"method must be a string, got {type(method).__name__}"
            return Violation("bad_request", msg, msgid=msgid)
        args = _args_of(frame[3])
        if args is None:
            msg = "args must be [map] with string keys: one map of named arguments"
            return Violation("bad_request", msg, msgid=msgid)
        if _too_deep(args, limits.max_depth):
            msg = f"args nest deeper than {limits.max_depth} levels"
            return Violation("bad_request", msg, msgid=msgid)
        return Request(msgid, method, args)
    if kind == RESPONSE:
        msgid = _msgid_of(frame, 1)
        if len(frame) != 4 or msgid is None:
            return Violation("bad_request", "a response is [1, msgid, error, result]")
        error = frame[2]
        if error is not None and not isinstance(error, dict):
            error = {"code": "internal", "message": repr(error)}
        return Response(msgid, error, frame[3])
    if kind == NOTIFICATION:
        if len(frame) != 3 or not isinstance(frame[1], str):
            return Violation("bad_request", "a notification is [2, method, [args]]")
        nargs = _args_of(frame[2])
        if nargs is None:
            return Violation("bad_request", "notification args must be [map]")
        return Notification(frame[1], nargs)
    return Violation("bad_request", f"unknown frame type {kind!r}; expected 0, 1 or 2")


class FrameParser:
    """Incremental decoder for one connection's byte stream.

    ``feed(data)`` buffers bytes and returns the events they complete. After a fatal violation
    the parser is dead: further input is ignored (the owner closes the connection).
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        lim = self.limits
        self._step = max(1, min(lim.max_frame, FEED_SLICE))
        self._fed = 0  # bytes fed so far
        self._frame_start = 0  # stream offset where the frame being decoded begins
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=False,
            max_buffer_size=lim.max_frame + self._step,
            max_str_len=lim.max_frame,
            max_bin_len=lim.max_frame,
            max_array_len=lim.max_array_len,
            max_map_len=lim.max_map_len,
            max_ext_len=0,
        )
        self.dead = False

    def feed(self, data: bytes) -> list[Event]:
        """Buffer ``data`` and return every event it completes, in order.

        The frame limit counts encoded bytes per frame (``Unpacker.tell`` positions), whatever
        the chunking: a frame of many small items is refused as surely as one big string.
        """
        if self.dead:
            return []
        events: list[Event] = []
        # Feed in slices, draining after each: the buffer holds at most one partial frame (no
        # more than max_frame, enforced below) plus one slice.
        step = self._step
        if len(data) <= step:
            chunks: Iterable[bytes | memoryview] = (data,) if data else ()
        else:
            view = memoryview(data)
            chunks = (view[start : start + step] for start in range(0, len(view), step))
        for chunk in chunks:
            try:
                self._unpacker.feed(chunk)
            except msgpack.BufferFull:
                events.extend(self._fatal("frame_too_large", self._too_large_message()))
                return events
            self._fed += len(chunk)
            events.extend(self._drain())
            if self.dead:
                break
            if self._fed - self._frame_start > self.limits.max_frame:
                events.extend(self._fatal("frame_too_large", self._too_large_message()))
                break
        return events

    def _too_large_message(self) -> str:
        return f"frame exceeds the {self.limits.max_frame}-byte limit"

    def _fatal(self, code: str, message: str) -> Iterator[Event]:
        self.dead = True
        yield Violation(code, message, fatal=True)

    def _drain(self) -> list[Event]:
        """Every complete frame in the buffer (iteration: no exception per call at the end)."""
        events: list[Event] = []
        unpacker = self._unpacker
        limits = self.limits
        try:
            for frame in unpacker:
                end = unpacker.tell()
                if end - self._frame_start > limits.max_frame:
                    events.extend(self._fatal("frame_too_large", self._too_large_message()))
                    return events
                self._frame_start = end
                events.append(classify(frame, limits))
        except msgpack.BufferFull:
            events.extend(self._fatal("frame_too_large", self._too_large_message()))
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            # ValueError covers msgpack's length limits ("exceeds max_array_len").
            text = str(exc)
            if "exceeds max" in text and "max_ext_len" not in text:
                limit = self._too_large_message()
                events.extend(self._fatal("frame_too_large", f"{limit} or a length limit ({text})"))
            else:
                msg = f"undecodable msgpack ({type(exc).__name__}): {exc}"
                events.extend(self._fatal("bad_request", msg))
        except Exception as exc:  # a hostile frame must never escape as a crash
            events.extend(self._fatal("bad_request", f"undecodable msgpack: {exc!r}"))
        return events
