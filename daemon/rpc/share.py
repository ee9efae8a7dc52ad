"""Fair shares of the event loop between peers: how much work each peer made the loop do lately,
and how long one that took more than its share waits before its next turn (sans-I/O).

A connection's reader charges the seconds its decoding, inline methods and reply writes took
(``charge``) to its peer's account, keyed by the peer's pid (``SO_PEERCRED``): a process that
reconnects for every frame keeps what it owes. Each account decays with time constant
``window``, so it reads as the peer's recent work per ``window`` seconds.

- **Share.** One core's worth of loop time per ``window`` is divided between the connections
  that worked within the last ``window``: a peer's share is ``window`` times its working
  connections over all working connections (deficit round robin weighted by connections,
  fairness on the loop's CPU rather than on turns).
- **Contended only.** A peer is held back only while the other peers together made the loop
  work at least ``busy`` of the ``window``: a lone heavy client (a big ``submit_many``, a
  pipelining bench) beside idle or light ones is never slowed.
- **Wait.** A peer over its share waits until its decayed work has fallen back to the share,
  ``window * ln(work / share)``, at most ``max_wait`` seconds, before its connection reads or
  works again; so a peer that always has input gets its share per ``window`` whatever its rate.
- **Penalty.** A peer whose connection was closed for misbehaving (a fatal protocol error such
  as a refused frame, a frame not finished within ``frame_timeout``, replies left unread past
  ``reply_timeout``) owes one ``window`` on top of its work (``penalize``), decaying alike: its
  connections wait while others keep the loop busy. A peer that reconnects to misbehave again
  and again is held back nearly all the time; the penalty never counts as work others see.

The three figures are ``ServerLimits.share_window`` (1 s), ``share_busy`` (0.02) and
``share_max_wait`` (0.5 s); a ``window`` of 0 turns shares off.

Turns (``TURN_BUDGET`` in ``connection.py``) bound how long one connection holds the loop at a
time; shares bound how much of the loop it gets over time. The pid is the kernel's, recorded at
``connect()``; a reused pid inherits a debt that decays within a few ``window``.
"""

from __future__ import annotations

import math
from typing import Final

import attrs

__all__ = ["Account", "WorkShares"]

FORGET_BELOW: Final = 1e-6  # seconds of decayed work under which an idle account is dropped


@attrs.define(eq=False)
class Account:
    """One peer's decayed work (seconds, as of ``stamp``) and its connections' last work."""

    work: float = 0.0
    stamp: float = 0.0
    connections: dict[int, float] = attrs.field(factory=dict)  # conn id -> when it last worked
    penalty: float = 0.0  # decayed seconds owed for misbehaving (``penalize``), as of ``stamp``


class WorkShares:
    """Every peer's account, the loop's total, and the count of working connections.

    ``charge`` and ``wait`` take the current time (``trio.current_time()``) from the caller;
    the working connections are recounted at most every quarter ``window`` (connections that
    ended are removed at once by ``release``).
    """

    def __init__(self, window: float, busy: float, max_wait: float) -> None:
        self.window = window
        self.busy = busy
        self.max_wait = max_wait
        self.accounts: dict[int, Account] = {}
        self.total = 0.0  # every peer's decayed work, as of total_stamp
        self.total_stamp = 0.0
        self.working = 0  # connections that worked within the last window
        self._recount_at = 0.0

    def _decayed(self, work: float, since: float, now: float) -> float:
        return work * math.exp((since - now) / self.window) if now > since else work

    def charge(self, peer: int, conn_id: int, seconds: float, now: float) -> float:
        """Count ``seconds`` of work by connection ``conn_id`` of ``peer``; return how long that
        connection should wait before it reads or works again (0.0: not at all)."""
        if self.window <= 0:
            return 0.0  # shares are off
        account = self.accounts.get(peer)
        if account is None:
            account = self.accounts[peer] = Account(stamp=now)
        self._age(account, now)
        account.work += seconds
        self.total = self._decayed(self.total, self.total_stamp, now) + seconds
        self.total_stamp = now
        if conn_id not in account.connections:
            self.working += 1
        account.connections[conn_id] = now
        if now >= self._recount_at:
            self._recount(now)
        return self._wait(account)

    def wait(self, peer: int, now: float) -> float:
        """How long ``peer``'s connections should wait before their next turn (0.0: none)."""
        account = self.accounts.get(peer)
        if account is None:
            return 0.0
        self._age(account, now)
        self.total = self._decayed(self.total, self.total_stamp, now)
        self.total_stamp = now
        return self._wait(account)

    def penalize(self, peer: int, seconds: float, now: float) -> None:
        """``peer`` misbehaved (a connection cut off at a timeout, a frame refused): it owes
        ``seconds`` more than its work, decaying like it, so its connections wait while others
        keep the loop busy. The loop's total is not changed: a penalty is not work others see."""
        if self.window <= 0:
            return
        account = self.accounts.get(peer)
        if account is None:
            account = self.accounts[peer] = Account(stamp=now)
        self._age(account, now)
        account.penalty += seconds

    def _age(self, account: Account, now: float) -> None:
        account.work = self._decayed(account.work, account.stamp, now)
        account.penalty = self._decayed(account.penalty, account.stamp, now)
        account.stamp = now

    def _wait(self, account: Account) -> float:
        """The wait of ``account``, its work and the total both decayed to the same time."""
        others = self.total - account.work
        if others < self.busy * self.window or self.working <= len(account.connections):
            return 0.0
        share = self.window * max(len(account.connections), 1) / self.working
        owed = account.work + account.penalty
        if owed <= share:
            return 0.0
        return min(self.max_wait, self.window * math.log(owed / share))

    def release(self, peer: int, conn_id: int) -> None:
        """Connection ``conn_id`` of ``peer`` ended: it no longer counts as working (the peer's
        work stays on its account and decays)."""
        account = self.accounts.get(peer)
        if account is not None and account.connections.pop(conn_id, None) is not None:
            self.working -= 1

    def _recount(self, now: float) -> None:
        """Forget connections that did not work within the last window, and idle accounts."""
        horizon = now - self.window
        working = 0
        for peer, account in list(self.accounts.items()):
            connections = account.connections
            for conn_id in [c for c, t in connections.items() if t < horizon]:
                del connections[conn_id]
            working += len(connections)
            left = self._decayed(account.work + account.penalty, account.stamp, now)
            if not connections and left < FORGET_BELOW:
                del self.accounts[peer]
        self.working = working
        self._recount_at = now + self.window / 4
