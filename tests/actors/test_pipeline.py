"""The call pipeline's pure decisions: health outcomes and body decoding."""

from __future__ import annotations

import pytest

from claykiln.actors.breaker_types import Outcome
from claykiln.actors.call import Operation, decode_body, error_outcome, health_outcome
from claykiln.actors.errors import TimeoutRefusal, UpstreamRefusal
from claykiln.actors.upstream import HttpResponse


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (202, Outcome.SUCCESS),
        (400, Outcome.SUCCESS),
        (401, Outcome.SUCCESS),
        (403, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (408, Outcome.FAILURE),
        (429, Outcome.IGNORED),
        (500, Outcome.FAILURE),
        (503, Outcome.FAILURE),
    ],
)
def test_health_outcome_is_http_aware(status: int, outcome: Outcome) -> None:
    """5xx and 408 hurt health, 429 is the gate's business, other 4xx are the caller's fault."""
    assert health_outcome(status) is outcome


def test_caller_deadline_timeouts_do_not_count_against_the_upstream() -> None:
    """A deadline-cut or pool-wait timeout is IGNORED; a class timeout or a reset is FAILURE."""
    assert error_outcome(TimeoutRefusal("x", details={"stage": "deadline"})) is Outcome.IGNORED
    pool_wait = TimeoutRefusal("x", details={"stage": "request", "phase": "pool"})
    assert error_outcome(pool_wait) is Outcome.IGNORED
    assert error_outcome(TimeoutRefusal("x", details={"stage": "request"})) is Outcome.FAILURE
    assert error_outcome(TimeoutRefusal("x", details={"stage": "connect"})) is Outcome.FAILURE
    assert error_outcome(UpstreamRefusal("x", details={"kind": "reset"})) is Outcome.FAILURE


def _response(ctype: str, body: bytes) -> HttpResponse:
    return HttpResponse(status=200, headers={"content-type": ctype}, body=body, duration=0.0)


def test_decode_body_by_content_type() -> None:
    """JSON is decoded, broken JSON and text come back as str, anything else as bytes."""
    assert decode_body(_response("application/json", b'{"a": 1}')) == {"a": 1}
    assert decode_body(_response("application/json; charset=utf-8", b"[1]")) == [1]
    assert decode_body(_response("application/json", b"{nope")) == "{nope"
    assert decode_body(_response("text/plain", b"hi")) == "hi"
    assert decode_body(_response("application/octet-stream", b"\x00\x01")) == b"\x00\x01"


def test_breaker_key_follows_the_scope() -> None:
    """An operation-scoped breaker is keyed upstream/operation; the default is the upstream."""
    op = Operation(name="push", upstream="clay", method="POST", path="/x", lane="bulk", timeout=1)
    assert op.breaker_key == "clay"
    scoped = Operation(
        name="push",
        upstream="clay",
        method="POST",
        path="/x",
        lane="bulk",
        timeout=1,
        breaker_scope="operation",
    )
    assert scoped.breaker_key == "clay/push"
    secret = Operation(
        name="p", upstream="u", method="GET", path="/", lane="l", timeout=1, credential="s3cret"
    )
    assert "s3cret" not in repr(secret)


def test_gate_key_defaults_to_the_upstream() -> None:
    """Without gate, an operation is paced and closed under its upstream's name; with one, its."""
    op = Operation(name="me", upstream="clay", method="GET", path="/me", lane="critical", timeout=1)
    assert op.gate == "clay"
    public = Operation(
        name="me",
        upstream="clay",
        method="GET",
        path="/me",
        lane="critical",
        timeout=1,
        gate="clay-public",
    )
    assert (public.gate, public.upstream, public.breaker_key) == ("clay-public", "clay", "clay")
