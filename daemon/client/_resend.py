"""When a client waits for the daemon, and when it sends a lost request again (sans-I/O).

A daemon restart (``systemctl restart kiln``, a crash and ``Restart=``, a ``kill -9``) should
not reach the callers. Two rules decide what the three client flavors do; they only move bytes,
sleep and ask this module.

Waiting (``ReconnectBackoff``): a connect that fails because the socket file is missing
(ENOENT) or nobody accepts on it (ECONNREFUSED; EAGAIN, a full backlog) is a daemon that is
(re)starting: it is tried again after a jittered, doubling wait (``RECONNECT_FIRST`` up to
``RECONNECT_CAP``) until the client's ``connect_timeout`` is spent, then ``DaemonUnavailable``.
Any other error (EACCES: the socket's mode or group) fails at once. Under socket activation
(``kiln.socket``) the socket never goes away: connects succeed and wait in its backlog.

Sending again (``resend_verdict``), at most ``MAX_RESENDS`` times per call, on a new connection:

- a request lost with its connection (``ConnectionLost``) before it fully left: always (the
  daemon cannot run half a frame);
- a request the daemon refused because it is draining (``ShuttingDown`` whose details say
  ``started: false``): always, once the new instance accepts;
- any other request lost with its connection, or refused with ``shutting_down``, only when
  repeating it is safe: the caller said ``retry_safe=True``; or its method only reads or sets a
  state (``REPEAT_SAFE_METHODS``); or it carries an ``idempotency_key``; or the daemon's
  ``hello`` lists its method under ``repeat_safe.methods``, or (for ``call``) its operation
  under ``repeat_safe.operations``. ``retry_safe=False`` keeps the caller's error.

Otherwise the caller gets the error (``ConnectionLost``: the call may or may not have run).
Replies, client-side timeouts and protocol violations are never resent.
"""

from __future__ import annotations

import enum
import errno
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from claykiln.daemon.client._core import PendingCall
from claykiln.daemon.client._errors import ConnectionLost, DaemonUnavailable, ShuttingDown
from claykiln.daemon.client._methods import Rpc

__all__ = [
    "MAX_RESENDS",
    "RECONNECT_CAP",
    "RECONNECT_FIRST",
    "REPEAT_SAFE_METHODS",
    "ReconnectBackoff",
    "RepeatSafe",
    "Resend",
    "resend_verdict",
]

MAX_RESENDS: Final = 3
RECONNECT_FIRST: Final = 0.02  # seconds before the second connect attempt (jittered)
RECONNECT_CAP: Final = 0.5  # the longest wait between two attempts
# Methods that only read, or set a state that setting again leaves the same.
REPEAT_SAFE_METHODS: Final = frozenset(
    {
        "hello",
        "status",
        "breaker.list",
        "breaker.force",
        "dlq.list",
        "dlq.get",
        "dlq.export",
        "jobs.get",
        "jobs.list",
        "quota.list",
        "idempotency.get",
        "cache.list",
        "metrics",
    }
)
# A daemon that is starting or restarting: no socket file yet, or nobody accepting on it.
_RESTARTING_ERRNOS: Final = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN})


class Resend(enum.Enum):
    """What to do with a call that failed with its connection."""

    NO = "no"  # hand the error to the caller
    YES = "yes"  # send it again on a new connection
    ASK = "ask"  # depends on what the daemon advertises: ask it (``hello``), then decide again


@attrs.frozen
class RepeatSafe:
    """What a daemon's ``hello`` reply advertises as safe to repeat (empty when it says nothing)."""

    methods: frozenset[str] = frozenset()
    operations: frozenset[str] = frozenset()

    @classmethod
    def from_hello(cls, reply: Any) -> RepeatSafe:
        """Read ``{"repeat_safe": {"methods": [...], "operations": [...]}}``, tolerating a daemon
        that sends neither (an older one) or sends them mistyped."""
        section = reply.get("repeat_safe") if isinstance(reply, Mapping) else None
        if not isinstance(section, Mapping):
            return cls()
        return cls(_names(section.get("methods")), _names(section.get("operations")))


def _names(value: Any) -> frozenset[str]:
    if not isinstance(value, list | tuple):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))


def resend_verdict(rpc: Rpc, call: PendingCall, advertised: RepeatSafe | None) -> Resend:
    """Whether ``rpc``, whose send ended as ``call`` records, may be sent again.

    ``advertised``: the daemon's ``RepeatSafe`` (None: not known yet, which may give ``ASK``).
    A call that got its reply, or any error but a lost connection or ``shutting_down``, is
    ``NO``. See the module docstring for the rules.
    """
    error = call.error
    if isinstance(error, ConnectionLost):
        if not call.sent:
            return Resend.YES
    elif isinstance(error, ShuttingDown):
        if error.details.get("started") is False:
            return Resend.YES
    else:
        return Resend.NO
    if rpc.retry_safe is not None:
        return Resend.YES if rpc.retry_safe else Resend.NO
    args = rpc.args or {}
    key = args.get("idempotency_key")
    if rpc.method in REPEAT_SAFE_METHODS or (isinstance(key, str) and key):
        return Resend.YES
    if advertised is None:
        return Resend.ASK
    if rpc.method in advertised.methods:
        return Resend.YES
    if rpc.method == "call" and args.get("operation") in advertised.operations:
        return Resend.YES
    return Resend.NO


class ReconnectBackoff:
    """The attempts to connect within one ``connect_timeout`` (see the module docstring).

    ``now`` readings come from the flavor's clock (monotonic seconds). ``attempt_timeout`` bounds
    one connect; ``after_failure`` says how long to sleep before the next one, or raises the
    ``DaemonUnavailable`` the caller gets.
    """

    def __init__(
        self,
        path: Path,
        connect_timeout: float,
        now: float,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._path = path
        self._connect_timeout = connect_timeout
        self._deadline = now + connect_timeout
        self._wait = RECONNECT_FIRST
        self._jitter = jitter

    def attempt_timeout(self, now: float) -> float:
        """Seconds the next connect may take (the time left, never zero: zero means no wait)."""
        return max(self._deadline - now, 1e-3)

    def after_failure(self, exc: OSError, now: float) -> float:
        """Seconds to wait before trying again after ``exc``.

        Raises ``DaemonUnavailable`` (naming the socket and the reason) when ``exc`` is not a
        daemon (re)starting, or when no time is left.
        """
        if isinstance(exc, TimeoutError):
            reason = "connect timed out"
        else:
            reason = exc.strerror or type(exc).__name__
        left = self._deadline - now
        if exc.errno not in _RESTARTING_ERRNOS:
            raise DaemonUnavailable.at(self._path, reason) from None
        if left <= 0:
            raise DaemonUnavailable.at(self._path, reason, waited=self._connect_timeout) from None
        wait = min(self._wait * (0.5 + self._jitter()), left)
        self._wait = min(self._wait * 2, RECONNECT_CAP)
        return wait
