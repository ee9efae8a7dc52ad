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

Decoding is bounded in work as well as in bytes (``decode.py``: a container budget per frame,
the collector paused while decoding, a cheap depth walk), and messages never echo a peer's input
past ``excerpt`` (a few dozen characters and the length).

This module is the public face: the vocabulary lives in ``frames.py``, decoding in
``decode.py``; everyone imports from here.
"""

from __future__ import annotations

from claykiln.daemon.rpc.decode import FrameParser, classify, nesting
from claykiln.daemon.rpc.frames import (
    EXCERPT_CHARS,
    FEED_SLICE,
    MAX_MESSAGE_CHARS,
    MSGID_MAX,
    NOTIFICATION,
    PROTOCOL_VERSION,
    REQUEST,
    RESPONSE,
    Event,
    Limits,
    Notification,
    Request,
    Response,
    Violation,
    clamp,
    encode_body,
    encode_notification,
    encode_request,
    encode_response,
    encode_response_body,
    error_map,
    excerpt,
)

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
    "FrameParser",
    "Limits",
    "Notification",
    "Request",
    "Response",
    "Violation",
    "clamp",
    "classify",
    "encode_body",
    "encode_notification",
    "encode_request",
    "encode_response",
    "encode_response_body",
    "error_map",
    "excerpt",
    "nesting",
]
