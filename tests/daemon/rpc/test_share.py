"""WorkShares: each peer's decayed work on the loop and the wait of one over its fair share of a
busy loop (pure: the caller passes the time and the seconds of work)."""

from __future__ import annotations

import math

import pytest

from claykiln.daemon.rpc.share import WorkShares

FLOOD, HONEST, OTHER = 101, 202, 303  # peer pids


def shares(window: float = 1.0, busy: float = 0.02, max_wait: float = 0.5) -> WorkShares:
    return WorkShares(window, busy, max_wait)


def busy_honest(s: WorkShares, connections: int = 16, now: float = 0.0) -> None:
    """``connections`` honest connections each charge 10 ms of work at ``now``."""
    for conn in range(connections):
        s.charge(HONEST, 1000 + conn, 0.01, now)


def test_a_lone_peer_never_waits_however_much_it_works() -> None:
    """With no other peer working, a heavy client (a pipelining bench) is never held back."""
    s = shares()
    waits = [s.charge(FLOOD, 1, 0.0005, n * 0.001) for n in range(2000)]
    assert s.accounts[FLOOD].work > 0.4 and set(waits) == {0.0}


def test_a_lone_peer_with_many_connections_never_waits() -> None:
    """A peer's own connections are no others: 64 of them working flat out are never held."""
    s = shares()
    waits = [s.charge(FLOOD, n % 64, 0.0005, n * 0.0005) for n in range(4000)]
    assert set(waits) == {0.0}


def test_light_others_leave_a_heavy_peer_alone() -> None:
    """Others below ``busy`` of the window (a status poller) do not make the loop busy."""
    s = shares()
    s.charge(OTHER, 9, 0.005, 0.0)  # 5 ms of someone else's work: under 20 ms
    waits = [s.charge(FLOOD, 1, 0.001, 0.001 * n) for n in range(500)]
    assert set(waits) == {0.0}


def test_a_peer_over_its_share_of_a_busy_loop_waits_until_back_at_its_share() -> None:
    """Beside 16 busy honest connections one flooding connection's share is 1/17 of the window;
    over it, it waits window * ln(work / share), after which it is at its share again."""
    s = shares(max_wait=10.0)
    busy_honest(s)
    wait = s.charge(FLOOD, 1, 0.2, 0.0)
    share = 1.0 / 17
    assert wait == pytest.approx(math.log(0.2 / share))
    assert s.wait(FLOOD, wait) == pytest.approx(0.0, abs=1e-9)
    assert s.accounts[FLOOD].work == pytest.approx(share)


def test_the_wait_is_bounded_by_max_wait() -> None:
    """However deep in debt, a peer waits at most ``max_wait`` before its next turn."""
    s = shares(max_wait=0.5)
    busy_honest(s)
    assert s.charge(FLOOD, 1, 5.0, 0.0) == 0.5


def test_honest_peers_under_their_share_never_wait() -> None:
    """16 connections of one peer share 16/17 of the window: their light work is under it."""
    s = shares()
    s.charge(FLOOD, 1, 0.5, 0.0)
    waits = [s.charge(HONEST, 1000 + n % 16, 0.0001, 0.0001 * n) for n in range(1000)]
    assert set(waits) == {0.0}


def test_a_share_is_weighted_by_working_connections() -> None:
    """Two peers at 0.3 s of work each: the one with one connection of four waits, the one with
    three does not (share 0.25 against 0.75)."""
    s = shares()
    s.charge(HONEST, 1, 0.1, 0.0)
    s.charge(HONEST, 2, 0.1, 0.0)
    s.charge(HONEST, 3, 0.1, 0.0)
    assert s.charge(FLOOD, 9, 0.3, 0.0) == pytest.approx(math.log(0.3 / 0.25))
    assert s.wait(HONEST, 0.0) == 0.0


def test_a_reconnecting_peer_keeps_its_debt_and_counts_once() -> None:
    """A peer that reconnects for every frame: each ended connection is released at once (it
    counts as one working connection, not one per frame), and what it took stays owed."""
    s = shares()
    busy_honest(s)
    for frame in range(20):
        s.charge(FLOOD, 100 + frame, 0.0033, frame * 0.001)
        s.release(FLOOD, 100 + frame)
    assert s.working == 16
    assert s.wait(FLOOD, 0.02) > 0.0  # the next connection waits before its first read


def test_work_decays_with_the_window() -> None:
    """A peer's work reads as its recent work: after one window it is 1/e of what it was."""
    s = shares()
    s.charge(FLOOD, 1, 0.4, 0.0)
    s.wait(FLOOD, 1.0)
    assert s.accounts[FLOOD].work == pytest.approx(0.4 / math.e)


def test_idle_connections_and_accounts_are_forgotten() -> None:
    """Connections that did not work within the window stop counting, and an account whose
    work has decayed to nothing is dropped (at the next recount)."""
    s = shares()
    busy_honest(s, connections=4)
    s.charge(FLOOD, 1, 0.001, 0.0)
    assert s.working == 5
    s.charge(FLOOD, 1, 0.0, 30.0)  # 30 windows later: only this connection worked
    assert s.working == 1 and set(s.accounts) == {FLOOD}


def test_a_window_of_zero_turns_shares_off() -> None:
    """``share_window = 0``: nobody ever waits."""
    s = shares(window=0.0)
    busy_honest(s)
    assert s.charge(FLOOD, 1, 5.0, 0.0) == 0.0
    assert s.wait(FLOOD, 0.0) == 0.0


def test_a_penalized_peer_waits_while_others_are_busy_and_the_penalty_decays() -> None:
    """A peer penalized one window (a connection cut off or refused a frame) waits before its
    next turn although its own work is light; the debt decays like work (after a few windows
    it is gone), it holds nobody back while the loop is otherwise idle, and others do not see
    it as work."""
    s = shares(max_wait=10.0)
    s.penalize(FLOOD, 1.0, 0.0)
    assert s.wait(FLOOD, 0.0) == 0.0  # nobody else busy: no wait
    assert s.total == 0.0  # a penalty is not work
    busy_honest(s)
    wait = s.charge(FLOOD, 1, 0.001, 0.0)
    share = 1.0 / 17
    assert wait == pytest.approx(math.log(1.001 / share))
    busy_honest(s, now=3.0)
    assert s.wait(FLOOD, 3.0) == 0.0  # decayed below the share after 3 windows
    assert s.accounts[FLOOD].penalty == pytest.approx(math.exp(-3.0))


def test_penalties_are_off_with_shares() -> None:
    s = shares(window=0.0)
    s.penalize(FLOOD, 1.0, 0.0)
    assert FLOOD not in s.accounts
