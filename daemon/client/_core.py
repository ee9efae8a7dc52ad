"""Sans-I/O bookkeeping shared by the sync, trio and asyncio clients.

A ``CallLedger`` belongs to one connection. ``start`` allocates a msgid (uint32, wrapping at
2**32, never one still awaiting a reply), registers a ``PendingCall`` and returns the request
bytes to send; ``receive`` feeds bytes read from the socket and resolves the calls they answer.
Each flavor only moves bytes and waits: the ledger decides.

- A call that timed out or was cancelled is ``abandon``-ed: its msgid stays reserved until the
  late reply arrives, which is then dropped, so it can never be handed to another call.
- A ``protocol_error`` notification, a frame the client cannot decode, or a lost connection
  fails every call in flight (``ProtocolViolation`` / ``ConnectionLost``) and sets ``failure``:
  the flavor closes the connection and the next call opens a new one with a new ledger. The
  ledger never resends; whether the flavor may send a lost call again on the new connection is
  ``_resend.py``'s decision, from what the flavor recorded (``PendingCall.sent``) and what the
  daemon on that connection advertised (``CallLedger.repeat_safe``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from claykiln.daemon.client._errors import (
    ConnectionLost,
    KilnError,
    KilnTimeout,
    ProtocolViolation,
    error_from_wire,
)
from claykiln.daemon.rpc.protocol import FrameParser as _FrameParser
from claykiln.daemon.rpc.protocol import (
    Limits,
    Notification,
    Request,
    Response,
    Violation,
    encode_request,
)

if TYPE_CHECKING:
    from claykiln.daemon.client._resend import RepeatSafe

__all__ = [
    "CALL_TIMEOUT_MARGIN",
    "CLIENT_LIMITS",
    "MSGID_MODULUS",
    "RECV_SIZE",
    "UNSET",
    "CallLedger",
    "NotificationHandler",
    "PendingCall",
    "call_timeout",
    "client_timeout_error",
    "resolve_timeout",
]

MSGID_MODULUS: Final = 2**32
RECV_SIZE: Final = 65536
# Seconds the client waits beyond a call's deadline_ms for the daemon's own answer (which comes
# at the deadline at the latest) before giving up with a client-side timeout.
CALL_TIMEOUT_MARGIN: Final = 1.0
# The daemon is trusted more than a client is: replies carry upstream bodies, so they may be
# larger and wider than the daemon's request limits (docs/protocol.md).
CLIENT_LIMITS: Final = Limits(
    max_frame=64 * 1024 * 1024, max_array_len=1_000_000, max_map_len=1_000_000
)

NotificationHandler = Callable[[str, dict[str, Any]], None]


class _Unset:
    """The type of ``UNSET``: "argument not given" where ``None`` is a meaningful value."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = _Unset()


class PendingCall:
    """One call awaiting its reply; ``wake`` is called once when it is resolved.

    ``done`` turns true when it is resolved (reply or failure) or abandoned; ``abandoned`` only
    when the caller gave up first (no outcome: the flavor raises its timeout or cancellation).
    ``sent`` is set by the flavor once the whole request frame left: a call lost before that
    cannot have run in the daemon.
    """

    __slots__ = ("abandoned", "done", "error", "method", "msgid", "result", "sent", "wake")

    def __init__(self, msgid: int, method: str, wake: Callable[[], None]) -> None:
        self.msgid = msgid
        self.method = method
        self.wake = wake
        self.done = False
        self.abandoned = False
        self.sent = False
        self.result: Any = None
        self.error: KilnError | None = None

    def resolve(self, result: Any, error: KilnError | None) -> None:
        """Record the outcome and wake the waiter (first outcome wins)."""
        if self.done:
            return
        self.done = True
        self.result = result
        self.error = error
        self.wake()

    def outcome(self) -> Any:
        """The result, or raise the call's error (a ``KilnError``)."""
        if self.error is not None:
            raise self.error
        return self.result


class CallLedger:
    """The calls in flight on one connection (see the module docstring).

    ``repeat_safe`` is what the daemon at the other end advertised in its ``hello`` reply, once
    a flavor asked (None: not asked on this connection yet).
    """

    def __init__(self, *, first_msgid: int = 0, limits: Limits = CLIENT_LIMITS) -> None:
        self._parser = _FrameParser(limits)
        self._pending: dict[int, PendingCall] = {}
        self._abandoned: set[int] = set()
        self._next = first_msgid % MSGID_MODULUS
        self.failure: KilnError | None = None
        self.repeat_safe: RepeatSafe | None = None

    @property
    def in_flight(self) -> int:
        """Replies still expected: calls waiting plus abandoned calls not yet answered."""
        return len(self._pending) + len(self._abandoned)

    @property
    def abandoned(self) -> int:
        """Calls given up (timeout, cancellation) whose late reply has not arrived yet."""
        return len(self._abandoned)

    def start(
        self, method: str, args: Mapping[str, Any] | None, wake: Callable[[], None]
    ) -> tuple[PendingCall, bytes]:
        """Register a call and return it with its request frame; the caller sends the bytes.

        Raises ``ConnectionLost`` when the ledger already failed (open a new connection).
        """
        if self.failure is not None:
            msg = f"this connection is unusable ({self.failure}); open a new one"
            raise ConnectionLost(msg)
        msgid = self._allocate()
        frame = encode_request(msgid, method, dict(args) if args else {})
        call = PendingCall(msgid, method, wake)
        self._pending[msgid] = call
        return call, frame

    def _allocate(self) -> int:
        msgid = self._next
        while msgid in self._pending or msgid in self._abandoned:
            msgid = (msgid + 1) % MSGID_MODULUS
        self._next = (msgid + 1) % MSGID_MODULUS
        return msgid

    def abandon(self, call: PendingCall) -> None:
        """Give up on ``call``: its late reply will be dropped; its msgid stays reserved."""
        if self._pending.get(call.msgid) is call:
            del self._pending[call.msgid]
            if self.failure is None:
                self._abandoned.add(call.msgid)
            call.done = call.abandoned = True

    def receive(self, data: bytes) -> list[Notification]:
        """Feed bytes read from the connection; resolve the calls they answer.

        Returns the notifications received, in order (``protocol_error`` included, after it
        failed the calls in flight). Once ``failure`` is set, further bytes are ignored.
        """
        notifications: list[Notification] = []
        if self.failure is not None:
            return notifications
        for event in self._parser.feed(data):
            if isinstance(event, Response):
                self._answer(event)
            elif isinstance(event, Notification):
                notifications.append(event)
                if event.method == "protocol_error":
                    self._protocol_error(event.args)
            elif isinstance(event, Violation):
                detail = f"the daemon sent a frame this client cannot read: {event.message}"
                self._violation(detail, event.code)
            elif isinstance(event, Request):
                detail = f"the daemon sent a request ({event.method!r}); clients serve none"
                self._violation(detail, "bad_request")
            if self.failure is not None:
                break
        return notifications

    def _answer(self, response: Response) -> None:
        call = self._pending.pop(response.msgid, None)
        if call is None:
            # A late reply to an abandoned call (or a msgid never used): drop it.
            self._abandoned.discard(response.msgid)
            return
        if response.error is not None:
            call.resolve(None, error_from_wire(response.error))
        else:
            call.resolve(response.result, None)

    def _protocol_error(self, args: Mapping[str, Any]) -> None:
        raw_code = args.get("code")
        code = raw_code if isinstance(raw_code, str) and raw_code else "bad_request"
        raw_message = args.get("message")
        text = raw_message if isinstance(raw_message, str) else "protocol violation"
        detail = f"the daemon reported a protocol violation and closes the connection: {text}"
        self._violation(detail, code)

    def _violation(self, detail: str, code: str) -> None:
        self.fail_all(lambda: ProtocolViolation(detail, code=code))

    def fail_all(self, make_error: Callable[[], KilnError]) -> None:
        """Fail every call in flight with a fresh error each, and mark the ledger failed.

        Idempotent: only the first failure is kept. Abandoned msgids are forgotten: the
        connection is going away, and a new one starts a fresh ledger.
        """
        if self.failure is None:
            self.failure = make_error()
        pending = list(self._pending.values())
        self._pending.clear()
        self._abandoned.clear()
        for call in pending:
            call.resolve(None, make_error())


def client_timeout_error(method: str, timeout: float) -> KilnTimeout:
    """The error for a call the client gave up on after ``timeout`` seconds."""
    msg = (
        f"no reply to {method!r} within {timeout:g}s (client-side timeout); the call may "
        f"still complete in the daemon"
    )
    return KilnTimeout(msg, details={"stage": "client", "timeout": timeout})


def resolve_timeout(timeout: float | None, default: float) -> float:
    """The per-call timeout in seconds: ``timeout`` when given, else the client's default.

    ``math.inf`` means wait forever; zero or negative values are rejected (``ValueError``).
    """
    value = default if timeout is None else float(timeout)
    if math.isnan(value) or value <= 0:
        msg = f"timeout must be a positive number of seconds (or math.inf), got {timeout!r}"
        raise ValueError(msg)
    return value


def call_timeout(timeout: float | None, deadline_ms: int | None, default: float) -> float:
    """The client timeout for ``call``: explicit, else the deadline plus a margin, else default."""
    if timeout is None and deadline_ms is not None:
        return deadline_ms / 1000.0 + CALL_TIMEOUT_MARGIN
    return resolve_timeout(timeout, default)
