"""The idempotency methods at the edge: arguments, inline answers, the admin forget; and a
replay answered by the call precheck."""

from __future__ import annotations

import os
from typing import Any

import attrs
import pytest
import trio

from claykiln.actors.errors import BadRequestRefusal, IdempotencyInFlightRefusal
from claykiln.actors.idempotency_record import IdempotencyRecord, RecordState
from claykiln.actors.keyed_call import PackedAnswer
from claykiln.daemon.methods import build_methods
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.types import Answered, RequestContext
from claykiln.daemon.runtime import Runtime
from claykiln.storage import unpack

ADMIN = RequestContext(PeerCred(pid=os.getpid(), uid=os.geteuid(), gid=0), 1, 3, admin=True)


def _record(runtime: Runtime, key: str, state: RecordState) -> IdempotencyRecord:
    now = runtime.idempotency.now()
    return IdempotencyRecord(
        key=key,
        state=state,
        operation="push_row",
        fingerprint="f" * 64,
        boot=runtime.idempotency.boot,
        started_at=now,
        expires_at=now + 60,
        sent={"method": "POST", "path": "/v3/sources/webhook/w1"},
        doubt="the daemon stopped" if state is RecordState.IN_DOUBT else None,
    )


async def test_get_shows_a_record_and_forget_deletes_it(runtime: Runtime) -> None:
    """get answers the record inline (nil when none); forget deletes it durably, once."""
    table = build_methods(runtime)
    get, forget = table["idempotency.get"].inline, table["idempotency.forget"].handler
    assert get is not None and forget is not None
    assert get(ADMIN, {"key": "k"}) is None
    with trio.fail_after(10):
        await runtime.idempotency.save(_record(runtime, "k", RecordState.IN_DOUBT))
        shown = get(ADMIN, {"key": "k"})
        assert shown["state"] == "in_doubt" and shown["expired"] is False
        assert shown["sent"] == {"method": "POST", "path": "/v3/sources/webhook/w1"}
        assert await forget(ADMIN, {"key": "k"}) == {"key": "k", "forgotten": True}
        assert await forget(ADMIN, {"key": "k"}) == {"key": "k", "forgotten": False}
    assert get(ADMIN, {"key": "k"}) is None
    assert table["idempotency.forget"].admin


async def test_forget_refuses_a_key_in_flight(runtime: Runtime) -> None:
    """A key whose call runs cannot be forgotten under it."""
    forget = build_methods(runtime)["idempotency.forget"].handler
    assert forget is not None
    with trio.fail_after(10):
        await runtime.idempotency.begin("busy", "f" * 64, repeatable=False, deadline=None)
        with pytest.raises(IdempotencyInFlightRefusal):
            await forget(ADMIN, {"key": "busy"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "key must be an idempotency key"),
        ({"key": ""}, "key must be an idempotency key"),
        ({"key": "k", "extra": 1}, "unknown argument"),
    ],
)
async def test_get_checks_its_arguments(
    runtime: Runtime, args: dict[str, Any], message: str
) -> None:
    """A missing, empty or unknown argument is a bad_request naming it."""
    get = build_methods(runtime)["idempotency.get"].inline
    assert get is not None
    with pytest.raises(BadRequestRefusal, match=message):
        get(ADMIN, args)


async def test_a_replay_is_answered_by_the_precheck(runtime: Runtime) -> None:
    """A completed key's call comes back from the precheck as Answered, marked replayed."""
    precheck = build_methods(runtime)["call"].precheck
    assert precheck is not None
    args = {"operation": "push_row", "path_params": {"webhook_id": "w1"}, "json": {"a": 1}}
    prepared = precheck(ADMIN, args)
    assert not isinstance(prepared, Answered)
    result = {"status": 200, "headers": {}, "body": {"status": "ok"}, "attempts": 1}
    record = attrs.evolve(
        _record(runtime, prepared.key, RecordState.COMPLETED),
        fingerprint=prepared.fingerprint,
        result=result,
    )
    with trio.fail_after(10):
        await runtime.idempotency.save(record)
    answered = precheck(ADMIN, args)
    assert isinstance(answered, Answered)
    assert isinstance(answered.result, PackedAnswer) and answered.packed is not None
    replay = unpack(answered.packed)  # the bytes the connection frames as they are
    assert replay == answered.result.result()
    assert replay["replayed"] is True and replay["body"] == {"status": "ok"}
