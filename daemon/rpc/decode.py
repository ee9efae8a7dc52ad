"""Decoding a peer's byte stream into msgpack-rpc events (sans-I/O, bounded in work).

``FrameParser`` feeds bytes to msgpack's streaming unpacker in slices and ``classify`` turns each
decoded frame into a ``Request`` / ``Response`` / ``Notification`` or a ``Violation``.

Decoding is bounded in work as well as in bytes: besides the frame size and the length of each
array and map, ``Limits.max_containers`` bounds the arrays and maps of one frame (a 1 MiB frame
of a million empty arrays is refused after about that many, not decoded whole and walked), the
collector is paused while a chunk decodes (it would walk the half-built frame again and again),
and ``nesting`` walks the containers a level at a time in C-level iterators. A request whose
arguments hold a few nested values (a row, path parameters) is checked by a short walk of at
most ``SMALL_WALK`` values first (``_small_within``); anything it cannot admit goes to
``nesting``, which names what is wrong.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from itertools import chain, compress, repeat
from operator import is_
from typing import Any, Final

import msgpack

from claykiln.daemon.rpc.frames import (
    EXCERPT_CHARS,
    FEED_SLICE,
    MSGID_MAX,
    NOTIFICATION,
    REQUEST,
    RESPONSE,
    Event,
    Limits,
    Notification,
    Request,
    Response,
    Violation,
    clamp,
    excerpt,
)

__all__ = ["FrameParser", "classify", "nesting"]

_CONTAINERS: Final = (list, dict)
UNPACK_BUFFER: Final = 16 * 1024  # bytes a parser's buffer starts with (it grows for big frames)


def nesting(obj: Any, max_depth: int, max_containers: int | None = None) -> str | None:
    """Why ``obj`` may not be served: deeper than ``max_depth`` levels or holding more than
    ``max_containers`` arrays and maps (``obj`` itself counts); None when within both.

    Walks a level at a time with C-level iterators (``chain``, ``map``, ``compress``), so the
    cost per element is a few nanoseconds, and stops at the first level past either bound.
    (Container map keys never get here: msgpack refuses them as unhashable while decoding.)
    """
    if type(obj) is dict and not any(type(v) in _CONTAINERS for v in obj.values()):
        return None  # the common case: a flat map of scalars
    level: list[Any] = [obj]
    depth = seen = 1
    while level:
        if depth > max_depth:
            return f"nests deeper than {max_depth} levels"
        if max_containers is not None and seen > max_containers:
            return f"holds more than {max_containers} arrays and maps"
        kinds = list(map(type, level))
        lists = compress(level, map(is_, kinds, repeat(list)))
        dicts = map(dict.values, compress(level, map(is_, kinds, repeat(dict))))
        items = list(chain(chain.from_iterable(lists), chain.from_iterable(dicts)))
        level = list(compress(items, map(_CONTAINERS.__contains__, map(type, items))))
        seen += len(level)
        depth += 1
    return None


SMALL_WALK: Final = 256  # values ``_small_within`` visits before leaving it to ``nesting``


def _small_within(args: dict[str, Any], max_depth: int, max_containers: int | None) -> bool:
    """True when ``args`` is known to be within both limits after visiting at most
    ``SMALL_WALK`` values (a row of a few fields: ~1 us, against ~5 us for ``nesting``'s
    level walk, whose C iterators pay off on big frames). False decides nothing: the caller
    runs ``nesting``, which names what is wrong."""
    budget = SMALL_WALK
    containers = 1
    stack: list[tuple[Any, int]] = [(args, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > max_depth:
            return False
        values = obj.values() if type(obj) is dict else obj
        budget -= len(values)
        if budget < 0:
            return False
        for value in values:
            kind = type(value)
            if kind is dict or kind is list:
                containers += 1
                stack.append((value, depth + 1))
    return max_containers is None or containers <= max_containers


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
                nested = False
                for key, value in args.items():
                    if type(key) is not str:
                        break  # an odd map: the full checks decide
                    if not nested and isinstance(value, list | dict):
                        nested = True
                else:
                    if not nested or _small_within(args, limits.max_depth, limits.max_containers):
                        return Request(msgid, method, args)
    if not isinstance(frame, list) or not frame:
        return Violation("bad_request", "a frame must be a msgpack array [type, ...]", fatal=False)
    kind = frame[0]
    if type(kind) is not int:
        msg = f"unknown frame type {excerpt(kind)}; expected 0, 1 or 2"
        return Violation("bad_request", msg)
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
        why = nesting(args, limits.max_depth, limits.max_containers)
        if why is not None:
            if why.startswith("holds"):  # the frame's cost, not its shape: as max_array_len
                return Violation("frame_too_large", f"args {why}", msgid=msgid, fatal=True)
            return Violation("bad_request", f"args {why}", msgid=msgid)
        return Request(msgid, method, args)
    if kind == RESPONSE:
        msgid = _msgid_of(frame, 1)
        if len(frame) != 4 or msgid is None:
            return Violation("bad_request", "a response is [1, msgid, error, result]")
        error = frame[2]
        if error is not None and not isinstance(error, dict):
            error = {"code": "internal", "message": excerpt(error)}
        return Response(msgid, error, frame[3])
    if kind == NOTIFICATION:
        # Any well-formed [2, method, params] is a notification, positional params included,
        # and a method sent as bin as well as str (pynvim sends bin).
        method = frame[1] if len(frame) == 3 else None
        if isinstance(method, bytes):
            method = method.decode("utf-8", "replace")
        if not isinstance(method, str) or type(frame[2]) not in _CONTAINERS:
            return Violation("bad_request", "a notification is [2, method, [params]]")
        nargs = _args_of(frame[2])
        if nargs is None:
            params = tuple(frame[2]) if isinstance(frame[2], list) else ()
            return Notification(method, {}, params)
        return Notification(method, nargs)
    return Violation("bad_request", f"unknown frame type {excerpt(kind)}; expected 0, 1 or 2")


class FrameParser:
    """Incremental decoder for one connection's byte stream.

    ``feed(data)`` buffers bytes and returns the events they complete. After a fatal violation
    the parser is dead: further input is ignored (the owner closes the connection).
    ``partial_bytes`` is how much of an incomplete frame is buffered (0 between frames) and
    ``frames`` counts the frames completed so far: the owner times how long a frame takes.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        lim = self.limits
        self._step = max(1, min(lim.max_frame, FEED_SLICE))
        self._fed = 0  # bytes fed so far
        self._frame_start = 0  # stream offset where the frame being decoded begins
        # Containers built so far for the frame being decoded (an estimate, see _budget_spent).
        self._built = 0
        self.frames = 0
        self._unpacker: msgpack.Unpacker | None = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=False,
            max_buffer_size=lim.max_frame + self._step,
            # msgpack's buffer starts at read_size (by default min(max_buffer_size, 1 MiB)) and
            # its write position walks through all of it before compacting: a long-lived
            # connection touched its whole MiB, 16 of them +16 MB RSS over minutes (issue 12,
            # item 13). A small start is reused in place; a big frame still grows it.
            read_size=min(UNPACK_BUFFER, lim.max_frame + self._step),
            max_str_len=lim.max_frame,
            max_bin_len=lim.max_frame,
            max_array_len=lim.max_array_len,
            max_map_len=lim.max_map_len,
            max_ext_len=0,
        )
        self.dead = False

    @property
    def partial_bytes(self) -> int:
        """Bytes of the incomplete frame buffered now (0: the stream is between frames)."""
        return self._fed - self._frame_start

    def feed(self, data: bytes) -> list[Event]:
        """Buffer ``data`` and return every event it completes, in order.

        The frame limit counts encoded bytes per frame (``Unpacker.tell`` positions), whatever
        the chunking: a frame of many small items is refused as surely as one big string. The
        container limit is checked after every slice of ``FEED_SLICE`` bytes.
        """
        unpacker = self._unpacker
        if self.dead or unpacker is None:
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
        # The collector is paused while frames decode: a half-built frame of many containers
        # would be walked by one collection after another (5x the decoding time, measured).
        collecting = gc.isenabled()
        gc.disable()
        try:
            for chunk in chunks:
                try:
                    unpacker.feed(chunk)
                except msgpack.BufferFull:
                    events.extend(self._fatal("frame_too_large", self._too_large_message()))
                    return events
                self._fed += len(chunk)
                before = self.frames
                allocated = gc.get_count()[0]
                events.extend(self._drain())
                if self.dead:
                    break
                if self._fed - self._frame_start > self.limits.max_frame:
                    events.extend(self._fatal("frame_too_large", self._too_large_message()))
                    break
                if self._budget_spent(before, gc.get_count()[0] - allocated):
                    why = f"frame holds more than {self.limits.max_containers} arrays and maps"
                    events.extend(self._fatal("frame_too_large", why))
                    break
        finally:
            if collecting:
                gc.enable()
        return events

    def _budget_spent(self, frames_before: int, allocated: int) -> bool:
        """Whether the frame still being decoded has built more containers than allowed.

        ``allocated``: the collector's count of container objects made while the slice was
        drained (CPython counts every list and dict it allocates; the collector is paused, so
        the count only grows). A slice that completed a frame restarts the estimate, so it
        never exceeds what the incomplete frame built; ``classify`` counts exactly once the
        frame is whole. This check only stops a frame early, before it is built entirely.
        """
        limit = self.limits.max_containers
        if limit is None:
            return False
        if self.frames != frames_before or not self.partial_bytes:
            self._built = 0
            return False
        self._built += max(0, allocated)
        return self._built > limit

    def _too_large_message(self) -> str:
        return f"frame exceeds the {self.limits.max_frame}-byte limit"

    def close(self) -> None:
        """Let go of the buffer and of a half-built frame now; the parser is dead after.

        A refused frame of many containers, kept until the connection's objects were
        collected, made every collection walk it: pauses of 20-27 ms per collection of the
        middle generation beside the ``abuse`` bench's worst-case frames, against 2-5 ms.
        """
        self.dead = True
        self._unpacker = None

    def _fatal(self, code: str, message: str) -> Iterator[Event]:
        self.close()
        yield Violation(code, message, fatal=True)

    def _drain(self) -> list[Event]:
        """Every complete frame in the buffer (iteration: no exception per call at the end)."""
        events: list[Event] = []
        unpacker = self._unpacker
        if unpacker is None:
            return events
        limits = self.limits
        try:
            for frame in unpacker:
                end = unpacker.tell()
                if end - self._frame_start > limits.max_frame:
                    events.extend(self._fatal("frame_too_large", self._too_large_message()))
                    return events
                self._frame_start = end
                self.frames += 1
                events.append(classify(frame, limits))
        except msgpack.BufferFull:
            events.extend(self._fatal("frame_too_large", self._too_large_message()))
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            # ValueError covers msgpack's length limits ("exceeds max_array_len").
            text = clamp(str(exc), EXCERPT_CHARS * 4)
            if "exceeds max" in text and "max_ext_len" not in text:
                limit = self._too_large_message()
                events.extend(self._fatal("frame_too_large", f"{limit} or a length limit ({text})"))
            else:
                msg = f"undecodable msgpack ({type(exc).__name__}): {text}"
                events.extend(self._fatal("bad_request", msg))
        except Exception as exc:  # a hostile frame must never escape as a crash
            text = clamp(repr(exc), EXCERPT_CHARS * 4)
            events.extend(self._fatal("bad_request", f"undecodable msgpack: {text}"))
        return events
