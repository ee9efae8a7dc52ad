"""The sans-I/O part of a subscription (``_subscribe.py`` has the contract): the request, the
reply, the notifications in order, what ends the connection, and the connect retry within
``connect_timeout``. It depends on the protocol core and the error tree only.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from claykiln.daemon.client._errors import (
    ConnectionLost,
    DaemonUnavailable,
    KilnError,
    KilnTimeout,
    ProtocolViolation,
    error_from_wire,
)
from claykiln.daemon.rpc.protocol import (
    FrameParser,
    Limits,
    Notification,
    Response,
    Violation,
    encode_request,
)

__all__ = [
    "RECV_SIZE",
    "Attempts",
    "Notification",
    "SubscriptionBase",
    "SubscriptionStream",
    "subscribe_args",
    "timeout_error",
]

RECV_SIZE: Final = 65536
# The daemon is trusted more than a client is: as the other flavors read it (``_core.py``).
LIMITS: Final = Limits(max_frame=64 * 1024 * 1024, max_array_len=1_000_000, max_map_len=1_000_000)
CONNECT_RETRY: Final = 0.05  # seconds between connects while the daemon (re)starts
SUBSCRIBE_MSGID: Final = 1


def timeout_error(what: str, seconds: float) -> KilnTimeout:
    msg = f"no {what} within {seconds:g}s (client-side timeout)"
    return KilnTimeout(msg, details={"stage": "client", "timeout": seconds})


class Attempts:
    """Attempts to connect within ``connect_timeout`` (a daemon restarting: no socket file yet,
    or nobody accepting on it): ``wait`` after each failure, then ``DaemonUnavailable``."""

    def __init__(self, path: Path, connect_timeout: float, now: float) -> None:
        self.path = path
        self.connect_timeout = connect_timeout
        self.deadline = now + connect_timeout

    def left(self, now: float) -> float:
        return max(self.deadline - now, 1e-3)

    def wait(self, exc: OSError, now: float) -> float:
        if now >= self.deadline:
            reason = exc.strerror or type(exc).__name__
            raise DaemonUnavailable.at(self.path, reason, waited=self.connect_timeout) from None
        return min(CONNECT_RETRY, self.deadline - now)


def subscribe_args(topics: Sequence[str] | None, buffer: int | None) -> dict[str, Any]:
    """``subscribe``'s named arguments: only those given (the daemon's defaults otherwise)."""
    args: dict[str, Any] = {}
    if topics is not None:
        if isinstance(topics, str):
            msg = "topics must be a list of topic names, e.g. ['tick', 'breaker']"
            raise TypeError(msg)
        args["topics"] = list(topics)
    if buffer is not None:
        args["buffer"] = buffer
    return args


class SubscriptionStream:
    """Sans-I/O: the subscribe request, its reply, then the notifications in order."""

    def __init__(self, args: dict[str, Any], path: Path) -> None:
        self.path = path
        self.parser = FrameParser(LIMITS)
        self.frame = encode_request(SUBSCRIBE_MSGID, "subscribe", args)
        self.reply: Response | None = None
        self.failure: KilnError | None = None
        self.notes: collections.deque[Notification] = collections.deque()

    @property
    def answered(self) -> bool:
        return self.reply is not None or self.failure is not None

    def feed(self, data: bytes) -> None:
        """Bytes from the socket (b"" at EOF)."""
        if self.failure is not None:
            return
        if not data:
            msg = f"the daemon at {self.path} closed the subscription's connection"
            self.failure = ConnectionLost(msg)
            return
        for event in self.parser.feed(data):
            if isinstance(event, Response) and event.msgid == SUBSCRIBE_MSGID:
                self.reply = event
            elif isinstance(event, Notification) and event.method == "protocol_error":
                text = event.args.get("message", "protocol violation")
                code = str(event.args.get("code") or "bad_request")
                self.failure = ProtocolViolation(f"the daemon closes: {text}", code=code)
            elif isinstance(event, Notification):
                self.notes.append(event)
            elif isinstance(event, Violation):
                msg = f"the daemon sent a frame this client cannot read: {event.message}"
                self.failure = ProtocolViolation(msg, code=event.code)

    def next_note(self) -> Notification | None:
        """The next notification; raises the connection's failure once none is left."""
        if self.notes:
            return self.notes.popleft()
        if self.failure is not None:
            raise self.failure
        return None

    def info(self) -> dict[str, Any]:
        """The subscribe reply (raises its error, or the connection's failure)."""
        if self.reply is None:
            assert self.failure is not None
            raise self.failure
        if self.reply.error is not None:
            raise error_from_wire(self.reply.error)
        result: dict[str, Any] = self.reply.result
        return result


class SubscriptionBase:
    """What every flavor's subscription holds: where it connects, its two timeouts, the
    ``subscribe`` answer (``info``, once open) and the sans-I/O stream it reads through."""

    def __init__(
        self, socket_path: Path, args: dict[str, Any], *, timeout: float, connect_timeout: float
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.info: dict[str, Any] = {}
        self._stream = SubscriptionStream(args, socket_path)
