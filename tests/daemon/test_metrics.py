"""The metrics and the stats tick over an in-process daemon (the ``runtime`` fixture: real
actors on a real LMDB store), and the counting wrapper of ``call``."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from claykiln.actors.errors import BreakerOpenRefusal
from claykiln.actors.figures import CallFigures
from claykiln.actors.keyed_call import PackedAnswer
from claykiln.daemon.methods.call_figures import UNKNOWN_OPERATION, answer_outcome, counted
from claykiln.daemon.metrics import parse_metrics, render_metrics
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.types import Answered, RequestContext
from claykiln.daemon.runtime import Runtime
from claykiln.daemon.ticks import RuntimeTicks, configured_gates
from claykiln.storage import pack

CTX = RequestContext(PeerCred(pid=1, uid=0, gid=0), conn_id=1, msgid=1, admin=False)


def _samples(runtime: Runtime) -> dict[str, Any]:
    return parse_metrics(render_metrics(runtime).decode())


async def test_the_metrics_parse_and_follow_the_naming_conventions(runtime: Runtime) -> None:
    """prometheus_client's parser reads every family; names start with claykiln_, counters
    end in _total, histogram buckets are cumulative up to +Inf = count."""
    runtime.pipeline.exchanges.record("clay", "2xx", failed=False, seconds=0.003)
    runtime.pipeline.exchanges.record("clay", "5xx", failed=True, seconds=0.2)
    runtime.call_figures.record("me", "ok", 0.004)
    text = render_metrics(runtime).decode()
    samples = parse_metrics(text)
    assert all(name.startswith("claykiln_") for name in samples)
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total") and line.split()[2] in samples
    assert samples["claykiln_info"][0][1] == 1.0
    requests = {
        labels["outcome"]: value for labels, value in samples["claykiln_upstream_requests_total"]
    }
    assert requests == {"2xx": 1.0, "5xx": 1.0}
    assert samples["claykiln_upstream_failures_total"] == [({"upstream": "clay"}, 1.0)]
    buckets = [
        (labels["le"], value)
        for labels, value in samples["claykiln_upstream_request_duration_seconds_bucket"]
    ]
    values = [value for _, value in buckets]
    assert values == sorted(values) and buckets[-1] == ("+Inf", 2.0)
    assert samples["claykiln_upstream_request_duration_seconds_count"][0][1] == 2.0
    health = {labels["state"]: value for labels, value in samples["claykiln_health"]}
    assert sum(health.values()) == 1.0
    lanes = {labels["lane"] for labels, _ in samples["claykiln_lane_active"]}
    assert lanes == set(runtime.config.lanes)
    states = {
        (labels["breaker"], labels["state"])
        for labels, value in samples["claykiln_breaker_state"]
        if value == 1.0
    }
    assert ("clay", "closed") in states
    assert samples["claykiln_dlq_jobs"] == [({}, 0.0)]


async def test_exported_counters_continue_when_their_source_restarts(runtime: Runtime) -> None:
    """A counter whose source starts again from zero keeps the total it had reached."""
    runtime.call_figures.record("me", "ok", 0.001)
    runtime.call_figures.record("me", "ok", 0.001)
    assert _calls(runtime) == 2.0
    runtime.call_figures = CallFigures()  # a source restarting from zero
    assert _calls(runtime) == 2.0
    runtime.call_figures.record("me", "ok", 0.001)
    assert _calls(runtime) == 3.0


def _calls(runtime: Runtime) -> float:
    found = _samples(runtime).get("claykiln_calls_total", [])
    return sum(value for labels, value in found if labels["outcome"] == "ok")


async def test_a_tick_has_every_section_and_rates_over_its_interval(runtime: Runtime) -> None:
    """Rates, error rates and percentiles cover the time since the previous tick; every lane,
    upstream, breaker and configured gate is there."""
    clock = [100.0]
    ticks = RuntimeTicks(runtime, clock=lambda: clock[0])
    first = ticks.build()
    for _ in range(8):
        runtime.pipeline.exchanges.record("clay", "2xx", failed=False, seconds=0.002)
    for _ in range(2):
        runtime.pipeline.exchanges.record("clay", "5xx", failed=True, seconds=0.4)
    runtime.call_figures.record("me", "ok", 0.002)
    clock[0] += 2.0
    tick = ticks.build()
    assert tick["seq"] == first["seq"] + 1 and tick["interval"] == 2.0
    clay = tick["upstreams"]["clay"]
    assert clay["requests"] == 10 and clay["requests_per_s"] == 5.0
    assert clay["error_rate"] == 0.2
    assert clay["p50_ms"] is not None and clay["p50_ms"] <= 2.5
    assert clay["p99_ms"] is not None and 250 <= clay["p99_ms"] <= 500
    assert tick["calls"] == {"total": 1, "per_s": 0.5}
    assert set(tick["lanes"]) == set(runtime.config.lanes)
    assert set(tick["gates"]) >= set(configured_gates(runtime.config))
    assert set(tick["breakers"]) >= {"clay"}
    assert set(tick["outbox"]) == {"pending", "retry_wait", "in_flight", "dead", "done"}
    clock[0] += 1.0
    quiet = ticks.build()["upstreams"]["clay"]
    assert (quiet["requests_per_s"], quiet["error_rate"], quiet["p99_ms"]) == (0.0, None, None)


def _runtime_ops(runtime: Runtime) -> str:
    return next(iter(runtime.pipeline.operations))


async def test_call_answers_are_counted_by_operation_and_outcome(runtime: Runtime) -> None:
    """Refusals count as their code, answers by kind, unknown operations as (unknown)."""
    op = _runtime_ops(runtime)

    def precheck(ctx: RequestContext, args: dict[str, Any]) -> Any:
        if args.get("refuse"):
            raise BreakerOpenRefusal("open")
        if args.get("replay"):
            return Answered({"status": 200, "replayed": True})
        if args.get("packed"):
            body = pack({"status": 200, "replayed": True})
            return Answered(PackedAnswer(body), packed=body)
        return args

    async def handler(ctx: RequestContext, prepared: Any) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"status": prepared["status"]}

    counted_precheck, counted_handler = counted(runtime, precheck, handler)
    with pytest.raises(BreakerOpenRefusal):
        counted_precheck(CTX, {"operation": op, "refuse": True})
    with pytest.raises(BreakerOpenRefusal):
        counted_precheck(CTX, {"operation": "no-such-op", "refuse": True})
    counted_precheck(CTX, {"operation": op, "replay": True})
    counted_precheck(CTX, {"operation": op, "packed": True})  # a stored replay, packed

    class Prepared(dict[str, Any]):
        request: Any = None

    for status in (200, 404):
        prepared = Prepared(status=status)
        prepared.request = type("R", (), {"operation": op})()
        await counted_handler(CTX, prepared)
    assert runtime.call_figures.outcomes == {
        (op, "breaker_open"): 1,
        (UNKNOWN_OPERATION, "breaker_open"): 1,
        (op, "replayed"): 2,
        (op, "ok"): 1,
        (op, "client_error"): 1,
    }


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ({"status": 200}, "ok"),
        ({"status": 302}, "ok"),
        ({"status": 429}, "client_error"),
        ({"status": 200, "replayed": True}, "replayed"),
        ({"status": 200, "coalesced": True}, "coalesced"),
        ({"status": 200, "fallback": True}, "fallback"),
    ],
)
def test_answer_outcomes(answer: dict[str, Any], outcome: str) -> None:
    """An answer map's outcome label."""
    assert answer_outcome(answer) == outcome
