"""Keyed calls claim their key on the reader, and a leader's outcome is finished by the writer:
the call coordinator in process over real actors, a real LMDB store and writer (real clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from test_keyed_call import Answer, Hold, ScriptedExchange, push, rig

from claykiln.actors.call import CallRequest
from claykiln.actors.errors import IdempotencyMismatchRefusal
from claykiln.actors.idempotency_flights import Follow, Lead
from claykiln.actors.idempotency_record import RecordState
from claykiln.actors.keyed_call import PreparedCall


async def test_precheck_claims_lead_and_follow_and_refuses_a_mismatch(store_path: Path) -> None:
    """The first precheck of a key leads, the next follows (no task, no ask); another request
    under the key is refused on the reader; the follower gets the leader's answer."""
    release = trio.Event()
    exchange = ScriptedExchange(Hold(release, Answer(201, b'{"row": 1}')), default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            first = r.calls.precheck(CallRequest(**push(idempotency_key="k")))
            second = r.calls.precheck(CallRequest(**push(idempotency_key="k")))
            assert isinstance(first, PreparedCall) and isinstance(first.started, Lead)
            assert isinstance(second, PreparedCall) and isinstance(second.started, Follow)
            with pytest.raises(IdempotencyMismatchRefusal):
                r.calls.precheck(CallRequest(**push(2, idempotency_key="k")))
            answers: list[dict[str, Any]] = []

            async def run(prepared: PreparedCall) -> None:
                answers.append(await r.calls.call(prepared))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, first)
                nursery.start_soon(run, second)
                release.set()
            in_flight = r.idem.stats()["in_flight"]
    assert in_flight == 0
    assert len(exchange.sent) == 1
    assert sorted(bool(a.get("coalesced")) for a in answers) == [False, True]
    assert {a["status"] for a in answers} == {201}


async def test_a_leader_cancelled_while_its_outcome_commits_still_stores_and_releases_it(
    store_path: Path,
) -> None:
    """The caller goes away once the outcome is queued: the outcome still becomes durable,
    the key is released, its follower is answered, and the key replays afterwards."""
    release = trio.Event()
    exchange = ScriptedExchange(Hold(release, Answer(200, b'{"row": 3}')), default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            leader_scope = trio.CancelScope()
            queue_outcome = r.idem.save_then

            def save_then_and_hang_up(*args: Any, **kw: Any) -> bool:
                queued = queue_outcome(*args, **kw)
                leader_scope.cancel()  # the caller hangs up right after the outcome is queued
                return queued

            r.idem.save_then = save_then_and_hang_up  # type: ignore[method-assign]
            followed: list[dict[str, Any]] = []

            async def lead() -> None:
                with leader_scope:
                    await r.call(**push(idempotency_key="k"))

            async def follow() -> None:
                followed.append(await r.call(**push(idempotency_key="k")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(lead)
                while r.idem.stats()["led"] < 1:
                    await trio.sleep(0.001)
                nursery.start_soon(follow)
                while r.idem.stats()["coalesced"] < 1:
                    await trio.sleep(0.001)
                release.set()
            assert leader_scope.cancelled_caught
            record = r.idem.lookup("k")
            replay = await r.call(**push(idempotency_key="k"))
            in_flight = r.idem.stats()["in_flight"]
    assert in_flight == 0
    assert record is not None and record.state is RecordState.COMPLETED
    assert followed and followed[0]["coalesced"] is True and followed[0]["body"] == {"row": 3}
    assert replay["replayed"] is True and replay["body"] == {"row": 3}
    assert len(exchange.sent) == 1
