"""``call``'s edge: parse_call's validation, and the precheck refusing before any task."""

from __future__ import annotations

import os

import pytest

from claykiln.actors.errors import BadRequestRefusal, UnknownOperationRefusal
from claykiln.actors.upstream import NO_JSON
from claykiln.daemon.methods import build_methods
from claykiln.daemon.methods.call import MAX_DEADLINE_MS, parse_call
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.types import RequestContext
from claykiln.daemon.runtime import Runtime

CALLER = RequestContext(PeerCred(pid=os.getpid(), uid=os.geteuid(), gid=0), 1, 3, admin=False)


def test_parse_call_builds_the_request_with_an_absolute_deadline() -> None:
    """deadline_ms becomes now + seconds; a str body is bytes; query values become strings."""
    request = parse_call(
        {
            "operation": "me",
            "deadline_ms": 1500,
            "body": "raw",
            "query": {"n": 2, "flag": True},
            "headers": {"x-trace": "t1"},
            "lane": "bulk",
        },
        now=100.0,
    )
    assert request.operation == "me"
    assert request.deadline == pytest.approx(101.5)
    assert request.body == b"raw"
    assert request.json is NO_JSON
    assert request.query == {"n": "2", "flag": "true"}
    assert request.headers == {"x-trace": "t1"}
    assert request.lane == "bulk"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"operation": "me", "typo": 1}, r"unknown argument\(s\) typo"),
        ({"operation": ""}, "operation must be a non-empty string"),
        (
            {"operation": "me", "deadline_ms": 0},
            f"deadline_ms must be .* \\(0, {MAX_DEADLINE_MS}\\]",
        ),
        ({"operation": "me", "deadline_ms": True}, "deadline_ms must be"),
        ({"operation": "me", "json": {}, "body": b"x"}, "give json or body, not both"),
        ({"operation": "me", "body": 5}, "body must be bytes or a string"),
        ({"operation": "me", "lane": 3}, "lane must be a string"),
        ({"operation": "me", "idempotency_key": ""}, "idempotency_key must be a string of 1-255"),
        ({"operation": "me", "path_params": {"id": [1]}}, "path_params must be a map"),
    ],
)
def test_parse_call_refuses_bad_arguments_precisely(args: dict[str, object], message: str) -> None:
    """Each malformed argument is a bad_request naming it and what it must be."""
    with pytest.raises(BadRequestRefusal, match=message):
        parse_call(args, now=0.0)


async def test_call_precheck_refuses_an_unknown_operation_before_a_task(runtime: Runtime) -> None:
    """The precheck answers unknown_operation at once, listing the configured operations."""
    precheck = build_methods(runtime)["call"].precheck
    assert precheck is not None
    with pytest.raises(UnknownOperationRefusal, match=r"unknown operation 'nope'.*push_row"):
        precheck(CALLER, {"operation": "nope"})
    assert precheck(CALLER, {"operation": "me"}).request.operation == "me"
