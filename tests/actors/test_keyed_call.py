"""The call coordinator in process: idempotency and fallback around a real CallPipeline (real
lanes, breaker and gate actors, a real LMDB store and writer), with a scripted exchange standing
in for the upstream. Real clock (the writer commits in a worker thread) unless a test says."""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing

from claykiln.actors.breaker import BreakerBoard, BreakerPolicy
from claykiln.actors.call import CallRequest, Operation
from claykiln.actors.errors import (
    BadRequestRefusal,
    BreakerOpenRefusal,
    IdempotencyInDoubtRefusal,
    IdempotencyInFlightRefusal,
    IdempotencyMismatchRefusal,
    UpstreamRefusal,
)
from claykiln.actors.fallback import CacheBounds, FallbackCache
from claykiln.actors.fallback_policy import CachePolicy
from claykiln.actors.gate import GateBoard
from claykiln.actors.idempotency import IdempotencyStore
from claykiln.actors.idempotency_record import RECORD_TABLE, RecordState
from claykiln.actors.keyed_call import CallGuard, KeyedCalls, PackedAnswer, PreparedCall
from claykiln.actors.lanes import LanePolicy, Lanes
from claykiln.actors.pipeline import CallPipeline, UpstreamRoute
from claykiln.actors.retry import RetryPolicy
from claykiln.actors.upstream import (
    HttpRequest,
    HttpResponse,
    UpstreamFailure,
    UpstreamPool,
    UpstreamTimeout,
)
from claykiln.actors.writer import Writer
from claykiln.storage import Put, Store

JSON = {"content-type": "application/json"}


def _op(name: str, method: str, path: str, **kw: Any) -> Operation:
    return Operation(
        name=name, upstream="clay", method=method, path=path, lane="l", timeout=5.0, **kw
    )


OPERATIONS = {
    op.name: op
    for op in (
        _op("push_row", "POST", "/v3/sources/webhook/{webhook_id}"),
        _op("push_keyed", "POST", "/v3/sources/webhook/{webhook_id}", idempotent=True),
        _op("start_routine", "POST", "/public/v0/routines/{routine_id}/runs"),
        _op("me", "GET", "/public/v0/me", repeat_safe=True),
    )
}
CACHE = CachePolicy(fresh_for=60.0, stale_for=600.0, max_age=3600.0)
GUARDS = {
    "push_row": CallGuard(idempotency="derive"),
    "push_keyed": CallGuard(idempotency="derive", key_field="kiln_key"),
    "start_routine": CallGuard(idempotency="required"),
    "me": CallGuard(cache=CACHE, fallback=True),
}


@attrs.frozen
class Answer:
    status: int
    body: bytes = b'{"status":"ok"}'


@attrs.frozen
class Hold:
    """Answer ``then`` once ``release`` is set (the request counts as sent at once)."""

    release: trio.Event
    then: Answer = Answer(200)


@attrs.frozen
class Drop:
    kind: str  # "connect": never sent; "reset": sent, no answer


@attrs.frozen
class Hang:
    """No answer until the caller's deadline or the class timeout."""


class ScriptedExchange:
    """Stands in for ``UpstreamPool`` (same ``execute`` contract): each request gets the next
    step; ``default`` answers once the script is used up."""

    def __init__(self, *steps: Any, default: Answer | None = Answer(200)) -> None:
        self.steps = list(steps)
        self.default = default
        self.sent: list[HttpRequest] = []

    async def execute(
        self, request: HttpRequest, *, timeout: float, stage_deadline: float | None = None
    ) -> HttpResponse:
        self.sent.append(request)
        step = self.steps.pop(0) if self.steps else self.default
        assert step is not None, f"unexpected request #{len(self.sent)}"
        if isinstance(step, Hold):
            await step.release.wait()
            step = step.then
        if isinstance(step, Drop):
            sent = step.kind != "connect"
            details = {"kind": step.kind, "retryable": True, "sent": sent, "upstream": "clay"}
            raise UpstreamFailure(f"upstream clay: {step.kind}", details=details)
        if isinstance(step, Hang):
            end = trio.current_time() + timeout
            if stage_deadline is not None:
                end = min(end, stage_deadline)
            await trio.sleep_until(end)
            details = {"stage": "deadline", "timeout": timeout, "retryable": True, "sent": True}
            raise UpstreamTimeout("upstream clay: timed out", details=details)
        return HttpResponse(step.status, JSON, step.body, duration=0.0)


@attrs.frozen
class Rig:
    calls: KeyedCalls
    exchange: ScriptedExchange
    idem: IdempotencyStore
    cache: FallbackCache
    breakers: BreakerBoard
    store: Store
    writer: Writer

    async def call(self, **kw: Any) -> dict[str, Any]:
        """precheck then, unless it answered, the handler: what a connection does."""
        prepared = self.calls.precheck(CallRequest(**kw))
        if isinstance(prepared, PackedAnswer):
            return prepared.result()
        if isinstance(prepared, dict):
            return prepared
        return await self.calls.call(prepared)

    async def settle_cache(self) -> None:
        """Everything remembered so far is written (a purge is handled after it)."""
        await self.cache.purge("no-such-operation")


@asynccontextmanager
async def rig(
    path: Path, exchange: ScriptedExchange, wall_clock: Callable[[], float] | None = None
) -> AsyncIterator[Rig]:
    store = Store.open(path)
    memory: dict[str, dict[str, Any]] = {}
    lanes = Lanes({"l": LanePolicy(concurrency=100, queue=100, max_wait=5.0)})
    breakers = BreakerBoard(
        {"clay": BreakerPolicy(volume_threshold=1000)},
        BreakerPolicy(),
        persist=memory.__setitem__,
        load=memory.get,
    )
    gate = GateBoard({}, persist=lambda *_: None, load=lambda _: None)
    pipeline = CallPipeline(
        OPERATIONS,
        {"clay": UpstreamRoute(cast(UpstreamPool, exchange), RetryPolicy(attempts=1))},
        lanes=lanes,
        breakers=breakers,
        gate=gate,
        rng=random.Random(1),
    )
    writer = Writer(store)
    clock = {"wall_clock": wall_clock} if wall_clock is not None else {}
    idem = IdempotencyStore(store, writer, **clock)
    cache = FallbackCache(store, writer, CacheBounds(), **clock)
    try:
        async with trio.open_nursery() as nursery:
            for actor in (writer, lanes, breakers, gate, idem, cache):
                await nursery.start(actor.run)
            yield Rig(
                KeyedCalls(pipeline, idem, cache, GUARDS),
                exchange,
                idem,
                cache,
                breakers,
                store,
                writer,
            )
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def push(n: int = 1, **kw: Any) -> dict[str, Any]:
    return {"operation": "push_row", "path_params": {"webhook_id": "w1"}, "json": {"n": n}, **kw}


async def _fifty(path: Path, key: str | None) -> tuple[ScriptedExchange, list[dict[str, Any]]]:
    release = trio.Event()
    exchange = ScriptedExchange(Hold(release, Answer(200, b'{"row": 7}')), default=None)
    results: list[dict[str, Any]] = []
    async with rig(path, exchange) as r:

        async def one() -> None:
            results.append(await r.call(**push(idempotency_key=key)))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
            while r.idem.stats()["coalesced"] < 49:
                await trio.sleep(0.001)
            release.set()
    return exchange, results


@pytest.mark.parametrize("key", ["order-1", None])
async def test_fifty_concurrent_keyed_calls_reach_the_upstream_once(
    store_path: Path, key: str | None
) -> None:
    """50 identical keyed calls (key given, or derived): one request upstream, one answer for
    all, 49 coalesced."""
    with trio.fail_after(20):
        exchange, results = await _fifty(store_path, key)
    assert len(exchange.sent) == 1
    assert {r["body"]["row"] for r in results} == {7}
    assert len([r for r in results if r.get("coalesced")]) == 49
    assert len({r["idempotency_key"] for r in results}) == 1


async def test_a_completed_key_is_replayed_on_the_reader(store_path: Path) -> None:
    """After the answer is stored, precheck answers the same key itself: no task, no request."""
    exchange = ScriptedExchange(Answer(201, b'{"id": 5}'), default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            first = await r.call(**push(idempotency_key="k"))
            replay = r.calls.precheck(CallRequest(**push(idempotency_key="k")))
    assert "replayed" not in first and first["status"] == 201
    assert isinstance(replay, PackedAnswer)  # the stored bytes, sent as they are
    assert replay.result() == {**first, "replayed": True}
    assert len(exchange.sent) == 1


async def test_a_record_of_the_layout_before_packed_answers_replays_as_a_map(
    store_path: Path,
) -> None:
    """A completed record holding its result as a plain map (written before packed answers)
    is replayed from the map on the reader, the same answer."""
    exchange = ScriptedExchange(Answer(201, b'{"id": 5}'), default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            first = await r.call(**push(idempotency_key="k"))
            # Rewritten behind the actor's back, as an earlier version would have left it on
            # disk: read from storage (the actor's replay copy of a record it read would hide
            # a write that bypasses it; none does in the daemon).
            value = r.store.get(RECORD_TABLE, b"k")
            assert isinstance(value, dict)
            old = {k: v for k, v in value.items() if k not in ("answer", "answer_crc")}
            old["result"] = first
            await r.writer.write([Put(RECORD_TABLE, b"k", old)])
            replay = r.calls.precheck(CallRequest(**push(idempotency_key="k")))
    assert replay == {**first, "replayed": True}
    assert len(exchange.sent) == 1


async def test_a_damaged_stored_answer_is_never_sent(store_path: Path) -> None:
    """A completed record whose packed answer fails its CRC-32 is not replayed: it reads as a
    malformed record (absent), so the call runs again, and the caller gets a whole answer."""
    exchange = ScriptedExchange(Answer(201, b'{"id": 5}'), Answer(201, b'{"id": 6}'))
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            await r.call(**push(idempotency_key="k"))
            value = r.store.get(RECORD_TABLE, b"k")  # damaged on disk: behind the actor's back
            assert isinstance(value, dict)
            answer = value["answer"]
            value["answer"] = answer[:-1] + bytes([answer[-1] ^ 0x20])
            await r.writer.write([Put(RECORD_TABLE, b"k", value)])
            again = r.calls.precheck(CallRequest(**push(idempotency_key="k")))
            assert isinstance(again, PreparedCall)
            second = await r.calls.call(again)
    assert second["body"] == {"id": 6} and "replayed" not in second
    assert len(exchange.sent) == 2


async def test_a_key_reused_for_another_request_is_a_mismatch(store_path: Path) -> None:
    """Same key, another body: idempotency_mismatch naming both fingerprints."""
    with trio.fail_after(10):
        async with rig(store_path, ScriptedExchange()) as r:
            await r.call(**push(1, idempotency_key="k"))
            with pytest.raises(IdempotencyMismatchRefusal) as info:
                await r.call(**push(2, idempotency_key="k"))
    details = info.value.details or {}
    assert details["fingerprint"] != details["request_fingerprint"]
    assert len(details["fingerprint"]) == len(details["request_fingerprint"]) == 64


async def test_required_without_a_key_is_a_bad_request(store_path: Path) -> None:
    """start_routine requires a key: without one, nothing is sent."""
    exchange = ScriptedExchange(default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            with pytest.raises(BadRequestRefusal, match="requires an idempotency_key"):
                await r.call(operation="start_routine", path_params={"routine_id": "r1"})
    assert exchange.sent == []


@pytest.mark.parametrize("status", [503, 409, 429])
async def test_an_answer_that_is_not_final_is_not_stored(store_path: Path, status: int) -> None:
    """A 503 (an error after retries), a 409 or a 429: the key is forgotten, a retry runs."""
    exchange = ScriptedExchange(Answer(status, b'{"message": "busy"}'), Answer(200))
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            if status >= 500:
                with pytest.raises(UpstreamRefusal):
                    await r.call(**push(idempotency_key="k"))
            else:
                assert (await r.call(**push(idempotency_key="k")))["status"] == status
            assert r.idem.lookup("k") is None
            again = await r.call(**push(idempotency_key="k"))
    assert again["status"] == 200 and "replayed" not in again
    assert len(exchange.sent) == 2


async def test_a_final_4xx_is_stored_and_replayed(store_path: Path) -> None:
    """A 400 is the upstream's final word: replayed, not sent again."""
    exchange = ScriptedExchange(Answer(400, b'{"message": "bad row"}'), default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            await r.call(**push(idempotency_key="k"))
            again = await r.call(**push(idempotency_key="k"))
    assert (again["status"], again["replayed"]) == (400, True)


async def test_sent_and_unanswered_leaves_the_key_in_doubt(store_path: Path) -> None:
    """A reset after sending on push_row (not safe to repeat): in doubt, the retry is refused
    with what is known; on a key_field operation the retry runs, stamped with the same key."""
    exchange = ScriptedExchange(Drop("reset"), Drop("reset"), Answer(200))
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            with pytest.raises(UpstreamRefusal):
                await r.call(**push(idempotency_key="k"))
            record = r.idem.lookup("k")
            assert record is not None and record.state is RecordState.IN_DOUBT
            with pytest.raises(IdempotencyInDoubtRefusal) as info:
                await r.call(**push(idempotency_key="k"))
            details = info.value.details or {}
            assert details["sent"] == {"method": "POST", "path": "/v3/sources/webhook/w1"}
            keyed = push(idempotency_key="k2") | {"operation": "push_keyed"}
            with pytest.raises(UpstreamRefusal):
                await r.call(**keyed)
            assert r.idem.lookup("k2") is None  # repeatable: forgotten
            assert (await r.call(**keyed))["status"] == 200
    assert len(exchange.sent) == 3
    stamped = exchange.sent[2]
    assert stamped.json == {"n": 1, "kiln_key": "k2"}
    assert stamped.headers["Idempotency-Key"] == "k2"


async def test_never_sent_failures_forget_the_key(store_path: Path) -> None:
    """A connect failure never left: the key is forgotten and the retry runs."""
    exchange = ScriptedExchange(Drop("connect"), Answer(200))
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            with pytest.raises(UpstreamRefusal):
                await r.call(**push(idempotency_key="k"))
            assert r.idem.lookup("k") is None
            assert (await r.call(**push(idempotency_key="k")))["status"] == 200


async def test_a_follower_waits_only_within_its_own_deadline(store_path: Path) -> None:
    """A follower whose deadline passes first gets idempotency_in_flight with retry_after."""
    release = trio.Event()
    exchange = ScriptedExchange(Hold(release), default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r, trio.open_nursery() as nursery:
            first = push(idempotency_key="k", deadline=trio.current_time() + 5)
            nursery.start_soon(functools.partial(r.call, **first))
            while r.idem.stats()["led"] < 1:
                await trio.sleep(0.001)
            with pytest.raises(IdempotencyInFlightRefusal) as info:
                await r.call(**push(idempotency_key="k", deadline=trio.current_time() + 0.05))
            release.set()
    assert info.value.retry_after is not None and 4 < info.value.retry_after <= 5
    assert len(exchange.sent) == 1


async def test_a_leader_that_goes_away_leaves_the_key_in_doubt(store_path: Path) -> None:
    """Cancelled mid-call (the caller hung up): the key is in doubt; its follower is told."""
    exchange = ScriptedExchange(Hang(), default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            errors: list[BaseException] = []

            async def follower() -> None:
                try:
                    await r.call(**push(idempotency_key="k"))
                except IdempotencyInDoubtRefusal as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                leader = trio.CancelScope()

                async def lead() -> None:
                    with leader:
                        await r.call(**push(idempotency_key="k"))

                nursery.start_soon(lead)
                while r.idem.stats()["led"] < 1 or not exchange.sent:
                    await trio.sleep(0.001)
                nursery.start_soon(follower)
                while r.idem.stats()["coalesced"] < 1:
                    await trio.sleep(0.001)
                leader.cancel()
            record = r.idem.lookup("k")
    assert record is not None and record.state is RecordState.IN_DOUBT
    assert len(errors) == 1


async def test_precheck_derives_and_stamps_without_touching_the_callers_request(
    store_path: Path,
) -> None:
    """The derived key is set on the request that goes upstream and stamped into the row."""
    with trio.fail_after(10):
        async with rig(store_path, ScriptedExchange()) as r:
            request = CallRequest(**push() | {"operation": "push_keyed"})
            prepared = r.calls.precheck(request)
    assert isinstance(prepared, PreparedCall)
    assert prepared.key is not None and prepared.key.startswith("sha256:")
    assert prepared.request.json == {"n": 1, "kiln_key": prepared.key}
    assert prepared.request.idempotency_key == prepared.key
    assert request.json == {"n": 1}


async def test_fallback_answers_a_failure_with_its_staleness(store_path: Path) -> None:
    """me is cached; with the breaker forced open (on the reader) or a 5xx (in the task), the
    cached answer comes back labelled fresh, stale, very_stale at each age boundary, then the
    error. The cache's clock is a MockClock the test moves."""
    wall = trio.testing.MockClock()
    exchange = ScriptedExchange(Answer(200, b'{"user": "ada"}'), Answer(503))
    with trio.fail_after(20):
        async with rig(store_path, exchange, wall_clock=wall.current_time) as r:
            await r.breakers.force("clay", "open")
            with pytest.raises(BreakerOpenRefusal):
                await r.call(operation="me")  # nothing cached yet: the error itself
            await r.breakers.force("clay", "reset")
            good = await r.call(operation="me")
            assert good["body"] == {"user": "ada"} and "fallback" not in good
            await r.settle_cache()
            failed = await r.call(operation="me")  # a 503: answered from the cache
            assert (failed["fallback"], failed["staleness"], failed["age"]) == (True, "fresh", 0)
            assert failed["error"]["code"] == "upstream_error"
            await r.breakers.force("clay", "open")
            seen = []
            for age in (0.0, 59.999, 60.0, 599.999, 600.0, 3600.0, 3600.001):
                wall.jump(age - wall.current_time())
                try:
                    answer = r.calls.precheck(CallRequest(operation="me"))
                except BreakerOpenRefusal:
                    seen.append("error")
                else:
                    assert isinstance(answer, dict) and answer["body"] == {"user": "ada"}
                    assert answer["error"]["code"] == "breaker_open"
                    assert answer["age"] == round(age, 3)
                    seen.append(answer["staleness"])
    assert seen == ["fresh", "fresh", "stale", "stale", "very_stale", "very_stale", "error"]
    assert r.cache.stats()["served"] == 7


async def test_fallback_with_nothing_cached_is_the_original_error(store_path: Path) -> None:
    """No good answer yet: the original error, untouched."""
    exchange = ScriptedExchange(Answer(503), default=None)
    with trio.fail_after(10):
        async with rig(store_path, exchange) as r:
            with pytest.raises(UpstreamRefusal) as info:
                await r.call(operation="me")
    assert info.value.details is not None and info.value.details["status"] == 503


async def test_answers_kept_survive_a_restart(store_path: Path) -> None:
    """The cache is in storage: the next process falls back on what the last one kept."""
    with trio.fail_after(10):
        async with rig(store_path, ScriptedExchange(Answer(200, b'{"v": 1}'))) as r:
            await r.call(operation="me")
            await r.settle_cache()
        async with rig(store_path, ScriptedExchange(Drop("connect"))) as r:
            answer = await r.call(operation="me")
    assert answer["fallback"] is True and answer["body"] == {"v": 1}
    assert answer["error"]["code"] == "upstream_error"
    await trio.testing.wait_all_tasks_blocked()
