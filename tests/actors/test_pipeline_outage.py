"""The call path through an upstream outage, in process on trio's autojump clock: the retry
budget, backoff cut short by an opening, the probe operation, and the outage-peers load shape
(32 callers each calling every 100 ms through a 30 s and a 35 s outage) against real lanes,
breaker and gate actors and a scripted upstream."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing

from claykiln.actors.breaker import BreakerBoard
from claykiln.actors.breaker_types import BreakerPolicy, BreakerState
from claykiln.actors.call import CallRequest, Operation
from claykiln.actors.errors import BreakerOpenRefusal, Refusal, UpstreamRefusal
from claykiln.actors.gate import GateBoard
from claykiln.actors.lanes import LanePolicy, Lanes
from claykiln.actors.pipeline import CallPipeline, UpstreamRoute
from claykiln.actors.retry import RetryPolicy
from claykiln.actors.upstream import HttpRequest, HttpResponse, UpstreamFailure, UpstreamPool

TIMEOUT = 3600.0  # virtual seconds
LATENCY = 0.001  # the scripted upstream answers after 1 ms
ME = "/public/v0/me"
OPERATIONS = {
    op.name: op
    for op in (
        Operation(name="me", upstream="clay", method="GET", path=ME, lane="critical", timeout=5.0),
        Operation(
            name="poll",
            upstream="clay",
            method="GET",
            path="/public/v0/runs/1",
            lane="critical",
            timeout=5.0,
            repeat_safe=True,
        ),
        Operation(
            name="push_row",
            upstream="clay",
            method="POST",
            path="/v3/sources/webhook/wh_1",
            lane="critical",
            timeout=5.0,
        ),
    )
}


class Upstream:
    """Stands in for ``UpstreamPool``: answers 500 while ``down``, else 200, after LATENCY."""

    def __init__(self) -> None:
        self.down = False
        self.refusing = False  # connections refused: the request never leaves
        self.sent: list[tuple[float, str, str]] = []  # (when, method, path)
        self.while_down = 0

    async def execute(
        self, request: HttpRequest, *, timeout: float, stage_deadline: float | None = None
    ) -> HttpResponse:
        self.sent.append((trio.current_time(), request.method, request.path))
        if self.refusing:
            details = {"kind": "connect", "retryable": True, "sent": False, "upstream": "clay"}
            raise UpstreamFailure("upstream clay: could not connect", details=details)
        down = self.down
        self.while_down += down
        await trio.sleep(LATENCY)
        if down:
            return HttpResponse(500, {}, b"down", duration=LATENCY)
        return HttpResponse(200, {"content-type": "application/json"}, b"{}", duration=LATENCY)


@attrs.frozen
class Rig:
    pipeline: CallPipeline
    upstream: Upstream
    breakers: BreakerBoard


class Memory:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def persist(self, key: str, record: dict[str, Any]) -> None:
        self.records[key] = dict(record)

    def load(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)


@asynccontextmanager
async def rig(breaker: BreakerPolicy, retry: RetryPolicy) -> AsyncIterator[Rig]:
    upstream = Upstream()
    lanes = Lanes({"critical": LanePolicy(concurrency=64, queue=64, max_wait=5.0)})
    memory, gate_memory = Memory(), Memory()
    breakers = BreakerBoard(
        {"clay": breaker},
        breaker,
        persist=memory.persist,
        load=memory.load,
        rng=random.Random(7),
    )
    gate = GateBoard({}, persist=gate_memory.persist, load=gate_memory.load)
    pipeline = CallPipeline(
        OPERATIONS,
        {"clay": UpstreamRoute(cast(UpstreamPool, upstream), retry)},
        lanes=lanes,
        breakers=breakers,
        gate=gate,
        rng=random.Random(5),
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for actor in (lanes, breakers, gate):
                await nursery.start(actor.run)
            yield Rig(pipeline, upstream, breakers)
            nursery.cancel_scope.cancel()


async def call(pipeline: CallPipeline, operation: str) -> int:
    """What the daemon does with a call: the fail-fast precheck, then the pipeline."""
    request = CallRequest(operation=operation)
    pipeline.fail_fast(request)
    return (await pipeline.call(request)).status


NEVER_OPENS = BreakerPolicy(consecutive_failures=0, volume_threshold=10_000)


async def test_the_retry_budget_caps_retries_in_flight(autojump_clock: Any) -> None:
    """Five callers fail at once; a budget of max(1, 20 % of 5 calls) lets one retry at a time:
    7 requests reach the upstream (5 first tries, 2 retries by the one caller that got a slot),
    not 15, and the others get their upstream_error at once."""
    retry = RetryPolicy(attempts=3, base=1.0, cap=1.0, budget=0.2, min_retries=1)
    async with rig(NEVER_OPENS, retry) as r:
        r.upstream.down = True
        ended: list[float] = []

        async def caller() -> None:
            with pytest.raises(UpstreamRefusal):
                await call(r.pipeline, "poll")
            ended.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(caller)
        assert len(r.upstream.sent) == 7
        budget = r.pipeline.budgets["clay"]
        assert (budget.calls, budget.retries, budget.refused) == (0, 0, 4)
        assert sorted(ended)[:4] == [pytest.approx(LATENCY)] * 4


async def test_a_budget_of_one_retries_every_call(autojump_clock: Any) -> None:
    """budget = 1 (off): each of five failing callers makes its three tries."""
    retry = RetryPolicy(attempts=3, base=1.0, cap=1.0, budget=1.0, min_retries=0)
    async with rig(NEVER_OPENS, retry) as r:
        r.upstream.down = True
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(_expect_upstream_error, r.pipeline)
        assert len(r.upstream.sent) == 15


async def _expect_upstream_error(pipeline: CallPipeline) -> None:
    with pytest.raises(UpstreamRefusal):
        await call(pipeline, "poll")


async def test_an_opening_cuts_every_backoff_short(autojump_clock: Any) -> None:
    """Three callers fail and wait in backoffs of up to 10 s; the third failure opens the breaker
    and all three get breaker_open at once, with no further request to the upstream."""
    breaker = BreakerPolicy(consecutive_failures=3, reset_timeout=30.0, reset_jitter=0.0)
    retry = RetryPolicy(attempts=3, base=10.0, cap=10.0)
    async with rig(breaker, retry) as r:
        r.upstream.down = True
        outcomes: list[tuple[str, float]] = []

        async def caller(delay: float) -> None:
            await trio.sleep(delay)
            try:
                await call(r.pipeline, "poll")
            except Refusal as exc:
                outcomes.append((exc.code, trio.current_time()))

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(caller, n * 0.01)
        assert [code for code, _ in outcomes] == ["breaker_open"] * 3
        assert max(at for _, at in outcomes) < 0.03  # nobody waited out a 10 s backoff
        assert len(r.upstream.sent) == 3


async def test_a_probe_operation_tests_the_upstream_before_a_callers_post(
    autojump_clock: Any,
) -> None:
    """Half-open with probe "me": a push_row caller's POST is sent only after the GET probe
    succeeded; while the upstream is still down the POST is never sent and the caller gets
    breaker_open."""
    breaker = BreakerPolicy(reset_jitter=0.0, probe_operation="me")
    async with rig(breaker, RetryPolicy(attempts=1)) as r:
        r.upstream.down = True
        for _ in range(5):
            with pytest.raises(UpstreamRefusal):
                await call(r.pipeline, "poll")
        await trio.testing.wait_all_tasks_blocked()
        assert r.breakers.snapshot["clay"].state is BreakerState.OPEN
        await trio.sleep(0.5)
        with pytest.raises(BreakerOpenRefusal):
            await call(r.pipeline, "push_row")  # the probe failed: the POST stayed here
        assert [(m, p) for _, m, p in r.upstream.sent[5:]] == [("GET", ME)]
        await trio.sleep(1.0)
        r.upstream.down = False
        assert await call(r.pipeline, "push_row") == 200
        assert [m for _, m, _ in r.upstream.sent[6:]] == ["GET", "POST"]
        assert r.breakers.snapshot["clay"].state is BreakerState.CLOSED


async def test_refused_connections_trip_on_the_connect_signal(autojump_clock: Any) -> None:
    """Three refused connections in a row open the breaker (consecutive_connect_failures) before
    the five failures of consecutive_failures."""
    async with rig(BreakerPolicy(reset_jitter=0.0), RetryPolicy(attempts=1)) as r:
        r.upstream.refusing = True
        for _ in range(3):
            with pytest.raises(UpstreamRefusal):
                await call(r.pipeline, "poll")
        await trio.testing.wait_all_tasks_blocked()
        view = r.breakers.snapshot["clay"]
        assert (view.state, view.failures) == (BreakerState.OPEN, 3)


# -- the outage-peers shape --------------------------------------------------------------------
CALLERS = 32  # 8 processes x 4 callers
PERIOD = 0.1  # each caller calls every 100 ms
BEFORE, AFTER = 10.0, 5.0


@attrs.define
class OutageFigures:
    reached_dead_upstream: int = 0
    opened_after: float | None = None
    latencies_during: list[float] = attrs.Factory(list)
    first_success_after_return: float | None = None
    probes: int = 0


async def run_outage(
    outage: float,
    breaker: BreakerPolicy,
    retry: RetryPolicy,
    *,
    callers: int = CALLERS,
    after: float = AFTER,
) -> OutageFigures:
    """``callers`` call poll every 100 ms each; the upstream is down from BEFORE for ``outage``
    seconds, then up for ``after`` seconds."""
    figures = OutageFigures()
    async with rig(breaker, retry) as r:
        t0 = trio.current_time()
        down_at, up_at = t0 + BEFORE, t0 + BEFORE + outage
        end = up_at + after

        async def caller(offset: float) -> None:
            next_at = t0 + offset
            while next_at < end:
                await trio.sleep_until(next_at)
                start = trio.current_time()
                try:
                    await call(r.pipeline, "poll")
                    ok = True
                except Refusal:
                    ok = False
                done = trio.current_time()
                if down_at <= start < up_at:
                    figures.latencies_during.append(done - start)
                if ok and start >= up_at and figures.first_success_after_return is None:
                    figures.first_success_after_return = done - up_at
                next_at += PERIOD

        async def outage_switch() -> None:
            await trio.sleep_until(down_at)
            r.upstream.down = True
            while r.breakers.snapshot["clay"].state is BreakerState.CLOSED:
                await trio.sleep(0.001)
            figures.opened_after = trio.current_time() - down_at
            await trio.sleep_until(up_at)
            r.upstream.down = False

        async with trio.open_nursery() as nursery:
            nursery.start_soon(outage_switch)
            for n in range(callers):
                nursery.start_soon(caller, n * PERIOD / callers)
        figures.reached_dead_upstream = r.upstream.while_down
        opened = figures.opened_after or 0.0
        figures.probes = sum(
            1 for at, _, _ in r.upstream.sent if down_at + opened + 0.1 < at < up_at
        )
    return figures


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


# The embedded default's breaker and retry (daemon/config/default.toml), with its probe.
DEFAULT_BREAKER = BreakerPolicy(probe_operation="me")
DEFAULT_RETRY = RetryPolicy()


async def test_a_30_s_outage_under_load_meets_the_peer_targets(autojump_clock: Any) -> None:
    """Under 320 calls/s: at most 39 requests reach the dead upstream (per-process pybreaker's
    count), the breaker opens within 0.5 s, callers' p99 during the outage stays under 5 ms, and
    the first success comes within 3 s of the upstream's return."""
    figures = await run_outage(30.0, DEFAULT_BREAKER, DEFAULT_RETRY)
    assert figures.reached_dead_upstream <= 39
    assert figures.opened_after is not None and figures.opened_after < 0.5
    assert p99(figures.latencies_during) < 0.005
    assert figures.first_success_after_return is not None
    assert figures.first_success_after_return < 3.0


async def test_a_35_s_outage_recovers_at_the_next_probe(autojump_clock: Any) -> None:
    """35 s down: the probe at ~31.5 s fails, so recovery waits for the next one (the interval
    had grown to 32 s): the price of at most a dozen probes per 5 minutes of outage."""
    figures = await run_outage(35.0, DEFAULT_BREAKER, DEFAULT_RETRY, after=35.0)
    assert figures.reached_dead_upstream <= 39
    assert p99(figures.latencies_during) < 0.005
    assert figures.first_success_after_return is not None
    assert figures.first_success_after_return < 32.0


async def test_a_five_minute_outage_costs_at_most_twelve_probes(autojump_clock: Any) -> None:
    """300 s down: the open interval grows to its 60 s cap, so at most 12 probes reach it (4
    callers suffice: a probe needs one caller when the interval ends)."""
    figures = await run_outage(300.0, DEFAULT_BREAKER, DEFAULT_RETRY, callers=4, after=65.0)
    assert figures.probes <= 12
    assert figures.first_success_after_return is not None
