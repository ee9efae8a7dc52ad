"""The lanes' pure admission core (LaneBook), tested without an event loop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.lanes import DEFAULT_LANES, LaneBook, LanePolicy, retry_hint

INF = float("inf")


def test_grants_then_queues_then_refuses() -> None:
    """Up to concurrency are granted, up to queue wait, the rest are refused and counted."""
    book = LaneBook(LanePolicy(concurrency=2, queue=1))
    assert [book.enter(t, INF, 0.0) for t in "abcd"] == ["granted", "granted", "queued", "full"]
    view = book.view("bulk")
    assert (view.active, view.queued, view.admitted, view.rejected) == (2, 1, 2, 1)
    assert view.full
    assert view.saturation == 1.0


def test_release_hands_slot_to_oldest_waiter() -> None:
    """A release grants the oldest waiter (FIFO), and only one."""
    book = LaneBook(LanePolicy(concurrency=1, queue=5))
    book.enter("holder", INF, 0.0)
    for ticket in ("w1", "w2", "w3"):
        book.enter(ticket, INF, 0.0)
    assert book.leave("holder", "released", 1.0) == ["w1"]
    assert book.leave("w1", "released", 2.0) == ["w2"]
    assert list(book.waiters) == ["w3"]


def test_free_slot_does_not_jump_the_queue() -> None:
    """A newcomer queues behind existing waiters even if a slot looks free."""
    book = LaneBook(LanePolicy(concurrency=2, queue=5))
    book.enter("a", INF, 0.0)
    book.enter("b", INF, 0.0)
    book.enter("w", INF, 0.0)
    book.policy = LanePolicy(concurrency=3, queue=5)
    assert book.enter("late", INF, 0.0) == "queued"
    assert book.hand_on(0.0) == ["w"]


def test_expired_waiters_are_skipped() -> None:
    """A waiter whose wait is up when a slot frees is passed over (its caller is leaving)."""
    book = LaneBook(LanePolicy(concurrency=1, queue=5))
    book.enter("holder", INF, 0.0)
    book.enter("expired", 5.0, 0.0)
    book.enter("live", 50.0, 0.0)
    assert book.leave("holder", "released", 5.0) == ["live"]
    assert book.leave("expired", "max_wait", 5.0) == []
    assert book.rejected == 1


def test_withdrawal_that_crossed_a_grant_releases_the_slot() -> None:
    """A waiter leaving after it was granted gives the slot back to the next waiter."""
    book = LaneBook(LanePolicy(concurrency=1, queue=5))
    book.enter("holder", INF, 0.0)
    book.enter("w1", INF, 0.0)
    book.enter("w2", INF, 0.0)
    assert book.leave("holder", "released", 1.0) == ["w1"]
    assert book.leave("w1", "cancelled", 1.0) == ["w2"]
    assert book.cancelled == 1


def test_hold_time_average_drives_retry_hint() -> None:
    """The retry hint grows with the queue at the observed hold time, within [0.05, max_wait]."""
    policy = LanePolicy(concurrency=2, queue=10, max_wait=5.0)
    assert retry_hint(None, 0, policy) == 2.5
    assert retry_hint(0.2, 3, policy) == pytest.approx(0.4)
    assert retry_hint(100.0, 3, policy) == 5.0
    assert retry_hint(0.0, 0, policy) == 0.05
    book = LaneBook(policy)
    book.enter("a", INF, 0.0)
    book.leave("a", "released", 2.0)
    assert book.hold == 2.0


def test_default_lanes() -> None:
    """The embedded default: critical=10, normal=5, bulk=2 concurrent."""
    assert {n: p.concurrency for n, p in DEFAULT_LANES.items()} == {
        "critical": 10,
        "normal": 5,
        "bulk": 2,
    }


def test_policy_validation() -> None:
    """A lane needs at least one slot and a positive max wait."""
    with pytest.raises(ValueError, match="concurrency"):
        LanePolicy(concurrency=0)
    with pytest.raises(ValueError, match="max_wait"):
        LanePolicy(max_wait=0.0)


@given(
    concurrency=st.integers(1, 4),
    queue=st.integers(0, 4),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=120),
)
def test_invariants_under_any_sequence(
    concurrency: int, queue: int, ops: list[tuple[bool, int]]
) -> None:
    """Holders never exceed concurrency, waiters never exceed queue, grants follow arrival order."""
    book = LaneBook(LanePolicy(concurrency=concurrency, queue=queue))
    arrival: dict[int, int] = {}
    granted_order: list[int] = []
    for n, (is_enter, ticket) in enumerate(ops):
        if is_enter and ticket not in arrival:
            arrival[ticket] = n
            if book.enter(ticket, INF, 0.0) == "granted":
                granted_order.append(ticket)
        elif not is_enter:
            granted_order.extend(book.leave(ticket, "released", 0.0))  # type: ignore[arg-type]
        assert len(book.holders) <= concurrency
        assert len(book.waiters) <= queue
        assert not (len(book.holders) < concurrency and book.waiters)
    assert [arrival[t] for t in granted_order] == sorted(arrival[t] for t in granted_order)
