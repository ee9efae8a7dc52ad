"""What ``call`` returns: a CallResult (the wire map, its fields as attributes) and keys."""

from __future__ import annotations

import pytest

from claykiln.daemon import BreakerOpen, CallResult, IdempotencyInDoubt, new_idempotency_key
from claykiln.daemon.client._errors import error_from_wire
from claykiln.daemon.client._result import call_result

PLAIN = {"status": 200, "headers": {"a": "b"}, "body": {"x": 1}, "attempts": 2, "duration_ms": 3.5}


def test_a_plain_result_is_still_the_map() -> None:
    """Items work as before; the fields are attributes; nothing is marked."""
    result = call_result(dict(PLAIN))
    assert isinstance(result, CallResult) and result == PLAIN
    assert result["status"] == 200
    assert (result.status, result.headers, result.body) == (200, {"a": "b"}, {"x": 1})
    assert (result.attempts, result.duration_ms) == (2, 3.5)
    assert not (result.replayed or result.coalesced or result.fallback)
    assert (result.staleness, result.age, result.error, result.idempotency_key) == (
        None,
        None,
        None,
        None,
    )


def test_replayed_coalesced_and_the_key() -> None:
    """The daemon's markers of an answer given under a key."""
    replay = call_result(PLAIN | {"replayed": True, "idempotency_key": "k1"})
    assert replay.replayed and not replay.coalesced and replay.idempotency_key == "k1"
    assert call_result(PLAIN | {"coalesced": True}).coalesced


def test_a_fallback_carries_staleness_age_and_the_error() -> None:
    """fallback, staleness, age, and the error as the client's exception class."""
    error = {"code": "breaker_open", "message": "open", "retry_after": 3.0, "details": {"b": 1}}
    result = call_result(
        PLAIN | {"fallback": True, "staleness": "stale", "age": 61.5, "error": error}
    )
    assert (result.fallback, result.staleness, result.age) == (True, "stale", 61.5)
    assert isinstance(result.error, BreakerOpen) and result.error.retry_after == 3.0
    assert "CallResult(" in repr(result)


def test_new_keys_are_unique_printable_and_prefixed() -> None:
    """A fresh key per request, ASCII, with the caller's prefix; a bad prefix is refused."""
    keys = {new_idempotency_key("order-17:") for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("order-17:") and len(k) == 9 + 32 and k.isascii() for k in keys)
    with pytest.raises(ValueError, match="printable ASCII"):
        new_idempotency_key("caf\u00e9")
    with pytest.raises(ValueError, match="223"):
        new_idempotency_key("x" * 224)


def test_anything_but_a_map_is_left_alone() -> None:
    """A result that is not a map (a newer daemon, a test server) comes back as it was."""
    assert call_result([1, 2]) == [1, 2]
    assert call_result(None) is None


def test_the_in_doubt_error_says_what_is_known() -> None:
    """idempotency_in_doubt maps to IdempotencyInDoubt with when it started and what was sent."""
    error = error_from_wire(
        {
            "code": "idempotency_in_doubt",
            "message": "maybe sent",
            "details": {"started_at": 1764367000.5, "sent": {"method": "POST", "path": "/x"}},
        }
    )
    assert isinstance(error, IdempotencyInDoubt)
    assert error.started_at == 1764367000.5
    assert error.sent == {"method": "POST", "path": "/x"}
    assert IdempotencyInDoubt("no details").sent == {}
