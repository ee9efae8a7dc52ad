"""What the server shares with its connections: the method table and the request bookkeeping.

A ``Connection`` depends on a ``Dispatch``, never on the ``Server``: the method table, the
limits, the admin check, the counters (with the draining flag) and ``begin_request`` /
``end_request``, which keep the in-flight count the drain waits on. The ``Server`` owns one
``Dispatch`` and hands it to every connection it accepts.

``ServerCounters`` are the figures ``status`` shows under ``server``; whoever builds the server
may pass them in (the daemon does, so its views read them without holding the server).

``PeerLog`` writes the log lines about what peers do wrong (``conn.refused``,
``conn.protocol_error``) at most once a second per uid, event and reason: a local flood of bad
connections or frames must not become a flood of log lines. Each line counts the ones left out
since the last (``not_logged_since``).

``shared_reply`` keeps the packed answer of each ``shared`` method for up to
``ServerLimits.shared_answer_age`` seconds, and only while no other request has started or
ended since (``note_activity``): a flood of ``status`` costs one computation per interval, each
request only its framing, and a client that acts and then asks still sees what it did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.poller import Poller
from claykiln.daemon.rpc.protocol import (
    encode_body,
    encode_response,
    encode_response_body,
    error_map,
)
from claykiln.daemon.rpc.share import WorkShares
from claykiln.daemon.rpc.types import Method, RequestContext, ServerLimits

__all__ = ["PEER_LOG_EVERY", "Dispatch", "PeerLog", "ServerCounters"]

PEER_LOG_EVERY: Final = 1.0  # seconds between two lines for one uid, event and reason
PEER_LOG_KEYS: Final = 4096  # (uid, event, reason) remembered before the quiet ones are dropped


class PeerLog:
    """Which warnings about peers to write: at most one per (uid, event, reason) per
    ``PEER_LOG_EVERY`` seconds. The caller writes the line itself (its event name stays a
    literal at the call site, where the log catalog test finds it)."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, str, str], float] = {}
        self._skipped: Counter[tuple[int, str, str]] = Counter()

    def due(self, peer: PeerCred, event: str, reason: str) -> int | None:
        """None when a line for the same uid, event and reason went out less than a second ago
        (this one is counted), else how many were left out since that line (0: none)."""
        key = (peer.uid, event, reason)
        now = trio.current_time()
        last = self._last.get(key)
        if last is not None and now - last < PEER_LOG_EVERY:
            self._skipped[key] += 1
            return None
        if len(self._last) > PEER_LOG_KEYS:  # many uids over time: forget the quiet ones
            self._last = {k: t for k, t in self._last.items() if now - t < PEER_LOG_EVERY}
            self._skipped = Counter({k: n for k, n in self._skipped.items() if k in self._last})
        self._last[key] = now
        return self._skipped.pop(key, 0)


@attrs.define(eq=False)
class ServerCounters:
    """The server's live figures; only the server and its connections write them."""

    connections: int = 0
    connections_total: int = 0
    requests: int = 0
    in_flight: int = 0
    protocol_errors: int = 0
    refused: int = 0  # connections refused (not allowed, too many, too many for the uid)
    cut_off: int = 0  # connections closed for a frame too slow or replies left unread
    held_back: int = 0  # waits of a connection whose peer took more than its share of the loop
    draining: bool = False  # set once by ``Server.drain``: new requests get ``shutting_down``

    def view(self) -> dict[str, Any]:
        """The ``server`` section of ``status`` (a fresh dict each time)."""
        return {
            "connections": self.connections,
            "connections_total": self.connections_total,
            "requests": self.requests,
            "in_flight": self.in_flight,
            "protocol_errors": self.protocol_errors,
            "refused": self.refused,
            "cut_off": self.cut_off,
            "held_back": self.held_back,
            "draining": self.draining,
        }


class Dispatch:
    """The method table a connection dispatches on, and the bookkeeping every request shares.

    ``begin_request`` / ``end_request`` bracket each request that runs in its own task;
    ``wait_idle`` returns when none is left (at once if none runs).
    """

    def __init__(
        self,
        methods: Mapping[str, Method],
        limits: ServerLimits,
        is_admin: Callable[[PeerCred], bool],
        counters: ServerCounters,
    ) -> None:
        self.methods = dict(methods)
        self.limits = limits
        self.is_admin = is_admin
        self.counters = counters
        self._idle = trio.Event()
        self._idle.set()
        # method -> (computed at, activity then, packed answer)
        self._shared: dict[str, tuple[float, int, bytes]] = {}
        self.activity = 0  # requests started or ended, but shared answers reused
        self.peer_log = PeerLog()
        self.poller = Poller(limits.busy_poll)  # the idle readers' shared epoll; the server runs it
        # each peer's recent work on the loop (``share.py``)
        self.shares = WorkShares(limits.share_window, limits.share_busy, limits.share_max_wait)

    def note_activity(self) -> None:
        """A request other than a reused shared answer ran: shared answers are stale now."""
        self.activity += 1

    def begin_request(self) -> None:
        self.activity += 1
        self.counters.in_flight += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def end_request(self) -> None:
        self.activity += 1
        self.counters.in_flight -= 1
        if self.counters.in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()

    def shared_reply(self, method: Method, ctx: RequestContext, msgid: int) -> bytes:
        """The reply to ``msgid`` for a ``shared`` inline method called without arguments: the
        answer packed within the last ``shared_answer_age`` seconds with no other request run
        since, else a fresh one (kept).

        Raises what the method raises (nothing is kept then).
        """
        assert method.inline is not None
        now = trio.current_time()
        kept = self._shared.get(method.name)
        if (
            kept is not None
            and kept[1] == self.activity
            and now - kept[0] < self.limits.shared_answer_age
        ):
            return encode_response_body(msgid, kept[2])
        result = method.inline(ctx, {})
        try:
            body = encode_body(result)
        except (TypeError, ValueError, OverflowError):
            msg = "the result could not be encoded as msgpack"
            return encode_response(msgid, error_map("internal", msg), None)
        self._shared[method.name] = (now, self.activity, body)
        return encode_response_body(msgid, body)
