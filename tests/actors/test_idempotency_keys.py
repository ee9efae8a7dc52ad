"""Idempotency keys and their rules: fingerprints, derived keys, key_field stamping, doubt."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.errors import (
    BadRequestRefusal,
    BreakerOpenRefusal,
    LaneFullRefusal,
    RateLimitedRefusal,
    TimeoutRefusal,
    UpstreamRefusal,
)
from claykiln.actors.idempotency_keys import (
    canonical,
    derived_key,
    failure_leaves_doubt,
    fingerprint,
    is_final_status,
    repeatable_in_doubt,
    stamp_key_field,
)
from claykiln.actors.upstream_http import NO_JSON

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _shuffled(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shuffled(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_shuffled(v) for v in value]
    return value


@given(values)
def test_canonical_form_ignores_map_order(value: Any) -> None:
    """Maps are encoded in one order whatever order their keys were inserted in."""
    assert canonical(value) == canonical(_shuffled(value))


@given(st.dictionaries(st.text(max_size=6), values, max_size=5))
def test_fingerprint_is_the_request_not_its_spelling(body: dict[str, Any]) -> None:
    """The same request spelled with another key order has the same fingerprint."""
    one = fingerprint("push_row", {"webhook_id": "w1"}, {"a": "1", "b": "2"}, body)
    two = fingerprint("push_row", {"webhook_id": "w1"}, {"b": "2", "a": "1"}, _shuffled(body))
    assert one == two
    assert len(one) == 64 and int(one, 16) >= 0


def test_fingerprint_tells_requests_apart() -> None:
    """Operation, path params, query and body each change it; no body, null and b"null" differ."""
    base = fingerprint("push_row", {"webhook_id": "w1"}, None, {"n": 1})
    assert base != fingerprint("push_row2", {"webhook_id": "w1"}, None, {"n": 1})
    assert base != fingerprint("push_row", {"webhook_id": "w2"}, None, {"n": 1})
    assert base != fingerprint("push_row", {"webhook_id": "w1"}, {"q": "1"}, {"n": 1})
    assert base != fingerprint("push_row", {"webhook_id": "w1"}, None, {"n": 2})
    none = fingerprint("me", None, None)
    null = fingerprint("me", None, None, None)
    raw = fingerprint("me", None, None, NO_JSON, b"null")
    assert len({none, null, raw}) == 3
    assert fingerprint("me", {}, {}) == none


def test_derived_key_names_its_hash() -> None:
    """A derived key is "sha256:" and the 64-digit fingerprint: short enough for a Clay column."""
    fp = fingerprint("me", None, None)
    assert derived_key(fp) == "sha256:" + fp
    assert len(derived_key(fp)) == 71


def test_unencodable_parameters_are_a_bad_request() -> None:
    """A value msgpack cannot encode is refused with bad_request, not a crash."""
    with pytest.raises(BadRequestRefusal, match="fingerprinted"):
        canonical({"x": object()})


def test_stamping_writes_the_key_into_a_copy_of_the_row() -> None:
    """The row gets the key in its field; the caller's map is left alone."""
    row = {"email": "a@b.c"}
    stamped = stamp_key_field(row, "kiln_key", "k-1", operation="push_row")
    assert stamped == {"email": "a@b.c", "kiln_key": "k-1"}
    assert row == {"email": "a@b.c"}
    again = stamp_key_field(stamped, "kiln_key", "k-1", operation="push_row")
    assert again == stamped


@pytest.mark.parametrize(
    ("body", "key", "match"),
    [
        ([1, 2], "k", "json as a map"),
        (NO_JSON, "k", "json as a map"),
        ({"kiln_key": "other"}, "k", "holds 'other'"),
        ({}, "k" * 201, "over 200"),
    ],
)
def test_stamping_refuses_what_cannot_carry_the_key(body: Any, key: str, match: str) -> None:
    """Not an object, another value in the field, or a key Clay's dedupe would ignore."""
    with pytest.raises(BadRequestRefusal, match=match) as info:
        stamp_key_field(body, "kiln_key", key, operation="push_row")
    assert "push_row" in info.value.message


def test_repeatable_in_doubt_means_repeat_safe_or_deduped() -> None:
    """Only repeat_safe operations and operations with a key_field may run an in-doubt key."""
    assert repeatable_in_doubt(repeat_safe=True, key_field=None)
    assert repeatable_in_doubt(repeat_safe=False, key_field="kiln_key")
    assert not repeatable_in_doubt(repeat_safe=False, key_field=None)


SENT_TIMEOUT = TimeoutRefusal("t", details={"stage": "request", "sent": True})
CONNECT_TIMEOUT = TimeoutRefusal("t", details={"stage": "connect", "sent": False})
LANE_TIMEOUT = TimeoutRefusal("t", details={"stage": "lane", "lane": "bulk"})
RESET = UpstreamRefusal("r", details={"kind": "reset", "sent": True})
CONNECT = UpstreamRefusal("c", details={"kind": "connect", "sent": False})
ANSWERED_503 = UpstreamRefusal("5", details={"status": 503, "body": "", "attempts": 1})


@pytest.mark.parametrize(
    ("error", "doubt"),
    [
        (SENT_TIMEOUT, True),
        (RESET, True),
        (CONNECT_TIMEOUT, False),
        (LANE_TIMEOUT, False),
        (CONNECT, False),
        (ANSWERED_503, False),
        (BreakerOpenRefusal("b"), False),
        (RateLimitedRefusal("r"), False),
        (LaneFullRefusal("l"), False),
    ],
)
def test_only_a_request_that_left_unanswered_is_in_doubt(error: Any, doubt: bool) -> None:
    """Sent and unanswered on an operation not safe to repeat: in doubt; anything else is not."""
    assert failure_leaves_doubt(error, repeatable=False) is doubt
    assert failure_leaves_doubt(error, repeatable=True) is False


@pytest.mark.parametrize(
    ("status", "final"),
    [
        *[(status, True) for status in (200, 201, 202, 400, 404, 422)],
        *[(status, False) for status in (408, 409, 425, 429, 500, 503)],
    ],
)
def test_final_statuses_are_stored(status: int, final: bool) -> None:
    """2xx and 4xx but 408/409/425/429 are final answers; the others may change on a retry."""
    assert is_final_status(status) is final
