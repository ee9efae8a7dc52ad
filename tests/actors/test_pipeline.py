"""The call pipeline: its pure decisions (health outcomes, body decoding, keys), and
``CallPipeline`` itself in process, over real lanes, breaker and gate actors and a scripted
exchange standing in for the upstream pool, on trio's autojump clock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import pytest
import structlog
import trio
import trio.testing

from claykiln.actors.breaker import BreakerBoard
from claykiln.actors.breaker_types import BreakerPolicy, BreakerState, BreakerView, Outcome
from claykiln.actors.call import (
    CallRequest,
    CallResult,
    Operation,
    decode_body,
    error_outcome,
    health_outcome,
)
from claykiln.actors.errors import RateLimitedRefusal, TimeoutRefusal, UpstreamRefusal
from claykiln.actors.gate import GateBoard, RatePolicy
from claykiln.actors.lanes import LanePolicy, Lanes
from claykiln.actors.pipeline import CallPipeline, UpstreamRoute
from claykiln.actors.retry import RetryPolicy, backoff_delay
from claykiln.actors.upstream import (
    HttpRequest,
    HttpResponse,
    UpstreamFailure,
    UpstreamPool,
    UpstreamTimeout,
)


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


# -- the pipeline in process: real actors, a scripted exchange, trio's autojump clock ----------

TIMEOUT = 3600.0  # virtual seconds: a hang fails the test instead of stalling it
SEED = 11
RETRY = RetryPolicy(attempts=3, base=1.0, cap=4.0)
BREAKER = BreakerPolicy(volume_threshold=20, reset_timeout=10.0, probe_timeout=60.0)
TRIPPY = BreakerPolicy(volume_threshold=2, reset_timeout=10.0, probe_timeout=60.0)
CREDENTIAL = "s3cret-api-key"
OPERATIONS = {
    op.name: op
    for op in (
        Operation(
            name="me",
            upstream="clay",
            method="GET",
            path="/public/v0/me",
            lane="critical",
            timeout=5.0,
            repeat_safe=True,
            auth_header="clay-api-key",
            credential=CREDENTIAL,
        ),
        Operation(
            name="push_row",
            upstream="clay",
            method="POST",
            path="/v3/sources/webhook/{webhook_id}",
            lane="bulk",
            timeout=30.0,
        ),
    )
}


@attrs.frozen
class Answer:
    """The upstream answers ``status`` at once."""

    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""


@attrs.frozen
class Hang:
    """The upstream never answers: the exchange's own time limit ends the call."""


@attrs.frozen
class Drop:
    """A transport failure of ``kind`` (connect: the request provably never left)."""

    kind: str


Step = Answer | Hang | Drop


@attrs.frozen
class Sent:
    """One exchange the pipeline started: when, what, and with which limits."""

    at: float
    request: HttpRequest
    timeout: float
    stage_deadline: float | None


class ScriptedExchange:
    """Stands in for ``UpstreamPool``: the same ``execute`` signature and error contract (a
    timeout's stage is "deadline" when the caller's deadline came before the class timeout),
    answering each call with the next step of its script."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.sent: list[Sent] = []

    async def execute(
        self,
        request: HttpRequest,
        *,
        timeout: float,
        stage_deadline: float | None = None,
    ) -> HttpResponse:
        start = trio.current_time()
        limit = start + timeout
        end = limit if stage_deadline is None else min(limit, stage_deadline)
        self.sent.append(Sent(start, request, timeout, stage_deadline))
        assert self.steps, f"unexpected attempt #{len(self.sent)}: {request.method} {request.path}"
        step = self.steps.pop(0)
        if isinstance(step, Drop):
            sent = step.kind != "connect"
            details = {"kind": step.kind, "retryable": True, "sent": sent, "upstream": "clay"}
            raise UpstreamFailure(f"upstream clay: {step.kind}", details=details)
        if isinstance(step, Hang):
            await trio.sleep_until(end)
            stage = "request" if end >= limit else "deadline"
            details = {"stage": stage, "timeout": timeout, "retryable": True, "sent": True}
            raise UpstreamTimeout(f"upstream clay: timed out ({stage})", details=details)
        headers = {name.lower(): value for name, value in step.headers.items()}
        return HttpResponse(step.status, headers, step.body, duration=0.0)


class Memory:
    """In-memory persistence (one per actor: their keys overlap)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def persist(self, key: str, record: dict[str, Any]) -> None:
        self.records[key] = dict(record)

    def load(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)


@attrs.frozen
class Rig:
    pipeline: CallPipeline
    exchange: ScriptedExchange
    lanes: Lanes
    breakers: BreakerBoard
    gate: GateBoard
    t0: float

    def breaker(self) -> BreakerView:
        return self.breakers.snapshot["clay"]


@asynccontextmanager
async def rig(
    *steps: Step, retry: RetryPolicy = RETRY, breaker: BreakerPolicy = BREAKER
) -> AsyncIterator[Rig]:
    """A CallPipeline over real Lanes, BreakerBoard and GateBoard actors and a scripted exchange;
    the gate paces "clay" at 10/s burst 20 (Clay's webhook limit)."""
    breaker_store, gate_store = Memory(), Memory()
    exchange = ScriptedExchange(*steps)
    lanes = Lanes(
        {
            "critical": LanePolicy(concurrency=1, queue=1, max_wait=5.0),
            "bulk": LanePolicy(concurrency=2, queue=10, max_wait=30.0),
        }
    )
    breakers = BreakerBoard(
        {"clay": breaker}, breaker, persist=breaker_store.persist, load=breaker_store.load
    )
    gate = GateBoard({"clay": RatePolicy()}, persist=gate_store.persist, load=gate_store.load)
    route = UpstreamRoute(cast(UpstreamPool, exchange), retry)
    pipeline = CallPipeline(
        OPERATIONS,
        {"clay": route},
        lanes=lanes,
        breakers=breakers,
        gate=gate,
        rng=random.Random(SEED),
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for actor in (lanes, breakers, gate):
                await nursery.start(actor.run)
            yield Rig(pipeline, exchange, lanes, breakers, gate, trio.current_time())
            nursery.cancel_scope.cancel()


def me(deadline: float | None = None) -> CallRequest:
    return CallRequest(operation="me", deadline=deadline)


def push(n: int = 1, deadline: float | None = None) -> CallRequest:
    return CallRequest(
        operation="push_row", path_params={"webhook_id": "wh_1"}, json={"n": n}, deadline=deadline
    )


async def settle() -> None:
    """Let the actors drain what was sent so far (fire-and-forget outcomes included)."""
    await trio.testing.wait_all_tasks_blocked()


async def test_retries_back_off_inside_the_deadline(autojump_clock: Any) -> None:
    """503, 502, 200 on a GET: three attempts spaced by the jittered backoff, within the
    deadline, each exchange bounded by that deadline; the caller sees only the 200."""
    replica = random.Random(SEED)  # the pipeline's rng, replayed
    first = backoff_delay(RETRY, 1, rng=replica, retry_after=None)
    second = backoff_delay(RETRY, 2, rng=replica, retry_after=None)
    async with rig(Answer(503), Answer(502), Answer(200, body=b"{}")) as r:
        deadline = r.t0 + 10.0
        result = await r.pipeline.call(me(deadline))
        assert (result.status, result.attempts) == (200, 3)
        times = [s.at - r.t0 for s in r.exchange.sent]
        assert times == pytest.approx([0.0, first, first + second])
        assert 0 < first <= RETRY.base and 0 < second <= 2 * RETRY.base
        assert all(s.stage_deadline == deadline for s in r.exchange.sent)
        assert r.exchange.sent[0].request.headers["clay-api-key"] == CREDENTIAL
        await settle()
        assert (r.breaker().calls, r.breaker().failures) == (3, 2)


async def test_no_retry_is_planned_past_the_deadline(autojump_clock: Any) -> None:
    """A 503 whose Retry-After ends past the caller's deadline is final at once: upstream_error
    with the status and one attempt, no sleeping towards a retry that could not finish."""
    async with rig(Answer(503, {"Retry-After": "5"}, b"down")) as r:
        with pytest.raises(UpstreamRefusal) as caught:
            await r.pipeline.call(me(deadline=r.t0 + 2.0))
        assert trio.current_time() == r.t0
        details = caught.value.details or {}
        assert (details["status"], details["attempts"], details["body"]) == (503, 1, "down")


async def test_retries_stop_when_the_attempts_are_spent(autojump_clock: Any) -> None:
    """Three 500s: upstream_error after policy.attempts tries, each one a breaker failure."""
    async with rig(Answer(500), Answer(500), Answer(500)) as r:
        with pytest.raises(UpstreamRefusal) as caught:
            await r.pipeline.call(me())
        assert (caught.value.details or {})["attempts"] == RETRY.attempts
        assert len(r.exchange.sent) == RETRY.attempts
        await settle()
        assert (r.breaker().calls, r.breaker().failures) == (3, 3)


async def test_a_post_that_is_not_repeat_safe_is_not_retried_after_a_5xx(
    autojump_clock: Any,
) -> None:
    """push_row (POST, not repeat-safe) that got a 500 may have stored the row: one attempt,
    upstream_error; a connect failure provably sent nothing, so that one is retried."""
    async with rig(Answer(500), Drop("connect"), Answer(200)) as r:
        with pytest.raises(UpstreamRefusal) as caught:
            await r.pipeline.call(push(1))
        assert (caught.value.details or {})["attempts"] == 1
        assert len(r.exchange.sent) == 1
        result = await r.pipeline.call(push(2))
        assert (result.status, result.attempts) == (200, 2)
        assert [s.request.json for s in r.exchange.sent] == [{"n": 1}, {"n": 2}, {"n": 2}]


async def test_a_429_closes_the_gate_for_every_caller_and_is_retried_after_retry_after(
    autojump_clock: Any,
) -> None:
    """Clay's 429 with Retry-After 3 closes the gate: a caller that can wait is held until it
    reopens, one whose deadline comes first is refused with rate_limited without reaching the
    upstream, and the 429'd push (never processed, so safe to repeat) is retried at t0 + 3."""
    async with rig(Answer(429, {"Retry-After": "3"}), Answer(200), Answer(200)) as r:
        results: dict[str, CallResult] = {}

        async def call(name: str, request: CallRequest) -> None:
            results[name] = await r.pipeline.call(request)

        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "first", push(1))
                await trio.sleep(1.0)
                assert r.gate.views["clay"].closed_until == pytest.approx(r.t0 + 3.0)
                nursery.start_soon(call, "patient", push(2))
                with pytest.raises(RateLimitedRefusal) as caught:
                    await r.pipeline.call(push(3, deadline=r.t0 + 2.0))
                assert caught.value.retry_after == pytest.approx(2.0)
                assert (caught.value.details or {})["reason"] == "closed"
        assert (results["first"].status, results["first"].attempts) == (200, 2)
        assert (results["patient"].status, results["patient"].attempts) == (200, 1)
        # It reopens with one token, then paces at its rate (10/s): no burst into Clay.
        times = sorted(s.at - r.t0 for s in r.exchange.sent)
        assert times == pytest.approx([0.0, 3.0, 3.1])
        assert sorted(s.request.json["n"] for s in r.exchange.sent) == [1, 1, 2]
        await settle()
        assert (r.breaker().calls, r.breaker().failures) == (2, 0)  # the 429 was IGNORED
    closed = [e for e in logs if e["event"] == "gate.closed"]
    assert [(e["gate"], e["retry_after"], e["reason"]) for e in closed] == [
        ("clay", 3.0, "429 from push_row")
    ]


async def test_5xx_408_class_timeouts_and_resets_are_breaker_failures(
    autojump_clock: Any,
) -> None:
    """Each of 500, 408, a class timeout and a reset counts as a failure; a 404 is the caller's
    fault and counts as a success for the upstream's health."""
    single = RetryPolicy(attempts=1)
    async with rig(Answer(500), Answer(408), Hang(), Drop("reset"), Answer(404), retry=single) as r:
        seen: list[object] = []
        for _ in range(5):
            try:
                seen.append((await r.pipeline.call(me())).status)
            except (UpstreamRefusal, TimeoutRefusal) as exc:
                details = exc.details or {}
                seen.append(details.get("status") or details.get("kind") or details.get("stage"))
        assert seen == [500, 408, "request", "reset", 404]
        assert trio.current_time() - r.t0 == pytest.approx(OPERATIONS["me"].timeout)
        await settle()
        assert (r.breaker().calls, r.breaker().failures) == (5, 4)


async def test_a_timeout_cut_by_the_callers_deadline_is_ignored(autojump_clock: Any) -> None:
    """Timeouts cut short by the caller's own deadline never count: three of them leave the
    breaker closed with nothing in its window, where two class timeouts open it."""
    single = RetryPolicy(attempts=1)
    async with rig(Hang(), Hang(), Hang(), Hang(), Hang(), retry=single, breaker=TRIPPY) as r:
        for _ in range(3):
            with pytest.raises(TimeoutRefusal) as caught:
                await r.pipeline.call(me(deadline=trio.current_time() + 1.0))
            assert (caught.value.details or {})["stage"] == "deadline"
        await settle()
        view = r.breaker()
        assert (view.state, view.calls, view.failures) == (BreakerState.CLOSED, 0, 0)
        for _ in range(2):
            with pytest.raises(TimeoutRefusal) as caught:
                await r.pipeline.call(me())
            assert (caught.value.details or {})["stage"] == "request"
        await settle()
        assert r.breaker().state is BreakerState.OPEN


async def test_401_and_403_are_successes_with_a_credentials_alert(autojump_clock: Any) -> None:
    """A rejected key: the caller gets Clay's 401/403 as is, the breaker counts the upstream as
    up, and upstream.credentials_rejected is logged as a critical alert without the key."""
    steps = (Answer(401, body=b"bad key"), Answer(403, body=b"forbidden"))
    with structlog.testing.capture_logs() as logs:
        async with rig(*steps) as r:
            statuses = [(await r.pipeline.call(me())).status for _ in steps]
            assert statuses == [401, 403]
            await settle()
            assert (r.breaker().calls, r.breaker().failures) == (2, 0)
            assert len(r.exchange.sent) == 2  # a 401/403 is final: never retried
    alerts = [e for e in logs if e["event"] == "upstream.credentials_rejected"]
    assert [(e["status"], e["alert"], e["severity"]) for e in alerts] == [
        (401, True, "critical"),
        (403, True, "critical"),
    ]
    assert alerts[0]["operation"] == "me" and alerts[0]["body"] == "bad key"
    assert CREDENTIAL not in repr(logs)


async def test_a_cancelled_call_releases_its_lane_slot_and_its_probe(
    autojump_clock: Any,
) -> None:
    """A caller that goes away while its half-open probe hangs frees the only critical slot
    and the probe slot (recorded IGNORED): the next call takes both and closes the breaker."""
    single = RetryPolicy(attempts=1)
    async with rig(
        Answer(500), Answer(500), Hang(), Answer(200), retry=single, breaker=TRIPPY
    ) as r:
        for _ in range(2):
            with pytest.raises(UpstreamRefusal):
                await r.pipeline.call(me())
        await settle()
        assert r.breaker().state is BreakerState.OPEN
        await trio.sleep(TRIPPY.reset_timeout * 1.5)  # past the open interval, any jitter too
        assert r.breaker().state is BreakerState.HALF_OPEN
        with trio.move_on_after(1.0) as scope:
            await r.pipeline.call(me())
        assert scope.cancelled_caught
        await settle()
        assert r.lanes.views["critical"].active == 0
        before = trio.current_time()
        view = r.breaker()
        assert (view.state, view.probes_in_flight) == (BreakerState.HALF_OPEN, 0)
        result = await r.pipeline.call(me())  # the lane's only slot, at once
        assert (result.status, trio.current_time()) == (200, before)
        await settle()
        assert r.breaker().state is BreakerState.CLOSED
