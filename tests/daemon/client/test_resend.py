"""The sans-I/O rules for waiting on a restarting daemon and sending a lost call again."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.daemon import (
    ConnectionLost,
    DaemonUnavailable,
    KilnError,
    KilnTimeout,
    ProtocolViolation,
    ShuttingDown,
)
from claykiln.daemon.client._core import PendingCall
from claykiln.daemon.client._methods import Rpc
from claykiln.daemon.client._resend import (
    MAX_RESENDS,
    RECONNECT_CAP,
    RECONNECT_FIRST,
    ReconnectBackoff,
    RepeatSafe,
    Resend,
    resend_verdict,
)

SOCKET = Path("/run/claykiln/kiln.sock")
ADVERTISED = RepeatSafe(methods=frozenset({"cache.get"}), operations=frozenset({"me"}))


def ended(error: KilnError | None, *, sent: bool = True, result: Any = None) -> PendingCall:
    call = PendingCall(1, "m", lambda: None)
    call.sent = sent
    call.resolve(result, error)
    return call


LOST = ended(ConnectionLost("gone"))


@pytest.mark.parametrize(
    ("rpc", "advertised", "verdict"),
    [
        (Rpc("hello"), None, Resend.YES),
        (Rpc("status"), None, Resend.YES),
        (Rpc("breaker.list"), None, Resend.YES),
        (Rpc("breaker.force", {"name": "clay", "state": "open"}), None, Resend.YES),
        (Rpc("call", {"operation": "push_row", "idempotency_key": "k1"}), None, Resend.YES),
        (Rpc("submit", {"operation": "push_row", "idempotency_key": "k1"}), None, Resend.YES),
        (Rpc("call", {"operation": "push_row", "idempotency_key": ""}), None, Resend.ASK),
        (Rpc("call", {"operation": "push_row"}, retry_safe=True), None, Resend.YES),
        (Rpc("status", retry_safe=False), None, Resend.NO),
        (Rpc("call", {"operation": "me"}), None, Resend.ASK),
        (Rpc("call", {"operation": "me"}), ADVERTISED, Resend.YES),
        (Rpc("call", {"operation": "push_row"}), ADVERTISED, Resend.NO),
        (Rpc("call", {"operation": "me"}), RepeatSafe(), Resend.NO),
        (Rpc("cache.get", {"key": "x"}), ADVERTISED, Resend.YES),
        (Rpc("submit", {"operation": "me"}), ADVERTISED, Resend.NO),
        (Rpc("dlq.purge"), RepeatSafe(), Resend.NO),
    ],
)
def test_a_call_lost_after_it_was_sent_is_resent_only_when_safe(
    rpc: Rpc, advertised: RepeatSafe | None, verdict: Resend
) -> None:
    """Lost after sending: resent for read-only methods, keys, advertised operations,
    retry_safe=True; asked about when it depends on the daemon; else not."""
    assert resend_verdict(rpc, LOST, advertised) is verdict


def test_a_call_that_never_fully_left_is_always_resent() -> None:
    """The daemon cannot have run a request it did not get whole, even with retry_safe=False."""
    unsent = ended(ConnectionLost("gone"), sent=False)
    assert resend_verdict(Rpc("dlq.purge", retry_safe=False), unsent, None) is Resend.YES


def test_shutting_down_is_resent_when_the_daemon_did_not_start_it_or_it_is_safe() -> None:
    """A draining daemon's refusal with started: false is always resent; otherwise as lost."""
    refused = ended(ShuttingDown("draining", details={"started": False}))
    assert resend_verdict(Rpc("dlq.purge"), refused, None) is Resend.YES
    bare = ended(ShuttingDown("draining"))
    assert resend_verdict(Rpc("dlq.purge"), bare, RepeatSafe()) is Resend.NO
    assert resend_verdict(Rpc("status"), bare, None) is Resend.YES


@pytest.mark.parametrize(
    "error",
    [
        None,
        KilnTimeout("late", details={"stage": "client"}),
        ProtocolViolation("bad frame", code="frame_too_large"),
        KilnError("upstream", code="upstream_error"),
        DaemonUnavailable("nobody"),
    ],
)
def test_replies_timeouts_and_violations_are_never_resent(error: KilnError | None) -> None:
    """Only a lost connection or shutting_down can lead to a resend, never a reply or timeout."""
    assert resend_verdict(Rpc("status", retry_safe=True), ended(error), ADVERTISED) is Resend.NO


def test_hello_advertisement_is_read_tolerantly() -> None:
    """repeat_safe is read from hello; an older daemon (no field) or a mistyped one gives none."""
    reply = {"repeat_safe": {"methods": ["cache.get", 3], "operations": ["me", "poll_routine"]}}
    assert RepeatSafe.from_hello(reply) == RepeatSafe(
        frozenset({"cache.get"}), frozenset({"me", "poll_routine"})
    )
    for older in ({"protocol": 1}, {"repeat_safe": ["me"]}, None, {"repeat_safe": {"m": 1}}):
        assert RepeatSafe.from_hello(older) == RepeatSafe()
    assert MAX_RESENDS >= 1


def refused(code: int = errno.ECONNREFUSED) -> OSError:
    return OSError(code, "refused")


def test_backoff_doubles_to_the_cap_within_connect_timeout() -> None:
    """Waits double from the first to the cap (jitter at its middle) and stop at the deadline."""
    backoff = ReconnectBackoff(SOCKET, 3.0, now=100.0, jitter=lambda: 0.5)
    now, waits = 100.0, []
    with pytest.raises(DaemonUnavailable) as info:
        while True:
            wait = backoff.after_failure(refused(), now)
            waits.append(wait)
            now += wait
    assert waits[:6] == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, RECONNECT_CAP])
    assert sum(waits) == pytest.approx(3.0)
    assert max(waits) == RECONNECT_CAP and waits[0] == RECONNECT_FIRST
    assert info.value.path == str(SOCKET) and "refused" in str(info.value)


@given(st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=60))
def test_backoff_never_waits_past_the_deadline(draws: list[float]) -> None:
    """Whatever the jitter, waits stay within 50-150% of the schedule and end at the deadline."""
    it = iter(draws)
    backoff = ReconnectBackoff(SOCKET, 2.0, now=0.0, jitter=lambda: next(it, 0.0))
    now = 0.0
    for _ in draws:
        try:
            wait = backoff.after_failure(refused(errno.ENOENT), now)
        except DaemonUnavailable:
            break
        assert 0 < wait <= RECONNECT_CAP * 1.5
        now += wait
        assert now <= 2.0 + 1e-9
        assert backoff.attempt_timeout(now) >= 1e-3


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOTSOCK, errno.ECONNRESET])
def test_errors_that_are_not_a_restart_fail_at_once(code: int) -> None:
    """A permission problem or a file that is not a socket is reported, not waited out."""
    backoff = ReconnectBackoff(SOCKET, 60.0, now=0.0)
    with pytest.raises(DaemonUnavailable) as info:
        backoff.after_failure(OSError(code, "nope"), 0.0)
    assert info.value.details["reason"] == "nope"


def test_a_connect_that_timed_out_has_no_time_left() -> None:
    """A connect that used up its time (a full backlog) ends the wait with 'connect timed out'."""
    backoff = ReconnectBackoff(SOCKET, 1.0, now=0.0)
    with pytest.raises(DaemonUnavailable, match="connect timed out"):
        backoff.after_failure(TimeoutError(), 1.0)
