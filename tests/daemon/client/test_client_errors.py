"""The client-side exception tree and its mapping from wire error maps."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import claykiln.daemon as kiln
from claykiln.daemon import (
    ConnectionLost,
    DaemonUnavailable,
    KilnError,
    KilnTimeout,
    UpstreamError,
    error_from_wire,
)

WIRE_CODES = {
    "bad_request": kiln.BadRequest,
    "unknown_method": kiln.UnknownMethod,
    "unknown_operation": kiln.UnknownOperation,
    "frame_too_large": kiln.FrameTooLarge,
    "breaker_open": kiln.BreakerOpen,
    "lane_full": kiln.LaneFull,
    "rate_limited": kiln.RateLimited,
    "timeout": kiln.KilnTimeout,
    "upstream_error": kiln.UpstreamError,
    "idempotency_in_flight": kiln.IdempotencyInFlight,
    "idempotency_mismatch": kiln.IdempotencyMismatch,
    "storage_full": kiln.StorageFull,
    "forbidden": kiln.Forbidden,
    "shutting_down": kiln.ShuttingDown,
    "internal": kiln.InternalError,
}


@pytest.mark.parametrize(("code", "cls"), sorted(WIRE_CODES.items()))
def test_every_wire_code_has_its_class(code: str, cls: type[KilnError]) -> None:
    """Each documented code maps to its class, keeping message, retry_after and details."""
    err = error_from_wire({"code": code, "message": "why", "retry_after": 3, "details": {"k": "v"}})
    assert type(err) is cls
    assert (err.code, err.message, err.retry_after, err.details) == (code, "why", 3.0, {"k": "v"})
    assert code == cls.CODE
    assert err.to_wire() == {
        "code": code,
        "message": "why",
        "retry_after": 3.0,
        "details": {"k": "v"},
    }


def test_unknown_code_keeps_the_code_on_the_base_class() -> None:
    """A code this library does not know becomes a plain KilnError with that code."""
    err = error_from_wire({"code": "quota_exceeded", "message": "later"})
    assert type(err) is KilnError
    assert err.code == "quota_exceeded"
    assert str(err) == "[quota_exceeded] later"
    assert err.retry_after is None and err.details == {}


@given(
    st.dictionaries(
        st.sampled_from(["code", "message", "retry_after", "details", "other"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text()
        | st.dictionaries(st.text(), st.integers()),
    )
)
def test_malformed_error_maps_still_give_a_kiln_error(wire: dict[str, Any]) -> None:
    """Whatever the error map holds, error_from_wire returns a KilnError with str fields."""
    err = error_from_wire(wire)
    assert isinstance(err, KilnError)
    assert isinstance(err.code, str) and err.code
    assert isinstance(err.message, str)
    assert err.retry_after is None or isinstance(err.retry_after, float)
    assert isinstance(err.details, dict)


def test_timeout_is_a_builtin_timeout_error() -> None:
    """KilnTimeout can be caught as TimeoutError and keeps its stage."""
    err = error_from_wire({"code": "timeout", "message": "t", "details": {"stage": "request"}})
    assert isinstance(err, TimeoutError) and isinstance(err, KilnTimeout)
    assert err.details["stage"] == "request"


def test_upstream_error_exposes_status_and_body() -> None:
    """UpstreamError.status / .body read the details; a missing status is None."""
    err = error_from_wire(
        {"code": "upstream_error", "message": "bad", "details": {"status": 502, "body": "oops"}}
    )
    assert isinstance(err, UpstreamError)
    assert (err.status, err.body) == (502, "oops")
    assert UpstreamError("x").status is None


def test_client_side_errors() -> None:
    """DaemonUnavailable names the path and the fix; both connection errors are ConnectionError."""
    err = DaemonUnavailable.at("/run/claykiln/kiln.sock", "No such file or directory")
    assert isinstance(err, ConnectionError) and isinstance(err, KilnError)
    assert err.path == "/run/claykiln/kiln.sock"
    for hint in ("/run/claykiln/kiln.sock", "kiln serve", "KILN_SOCKET", "No such file"):
        assert hint in str(err)
    assert "waited_s" not in err.details and "retried" not in str(err)
    waited = DaemonUnavailable.at("/tmp/k.sock", "Connection refused", waited=5.0)
    assert waited.details["waited_s"] == 5.0 and "retried for 5 s" in str(waited)
    assert isinstance(ConnectionLost("gone"), ConnectionError)
    assert ConnectionLost("gone").code == "connection_lost"


def test_errors_survive_pickling() -> None:
    """Errors cross process boundaries with their code, retry_after and details."""
    err = error_from_wire({"code": "brand_new", "message": "m", "retry_after": 1, "details": {}})
    timeout = KilnTimeout("t", details={"stage": "client"})
    for original in (err, timeout):
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is type(original)
        assert (copy.code, copy.message, copy.retry_after, copy.details) == (
            original.code,
            original.message,
            original.retry_after,
            original.details,
        )
