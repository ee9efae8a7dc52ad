"""Sans-I/O tests of the Clay simulator: token bucket, fault plans, handlers without a socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.daemon.simulator import (
    Faults,
    SimSettings,
    Simulator,
    SimulatorConfigError,
    TokenBucket,
    WebhookConfig,
)

JSON = {"content-type": "application/json"}


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_then_refills_at_rate() -> None:
    """A new bucket grants `burst` tokens at once, then one per 1/rate seconds."""
    bucket = TokenBucket(rate=10.0, burst=20)
    assert [bucket.try_take(0.0) for _ in range(21)] == [True] * 20 + [False]
    assert bucket.wait_time(0.0) == pytest.approx(0.1)
    assert bucket.try_take(0.1)
    assert not bucket.try_take(0.1)


def test_bucket_never_exceeds_burst_after_idle() -> None:
    """However long the bucket idles, it holds at most `burst` tokens."""
    bucket = TokenBucket(rate=10.0, burst=5)
    bucket.try_take(0.0)
    assert bucket.remaining(1_000.0) == 5


@given(st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200))
def test_bucket_grants_at_most_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    """Over any request schedule, grants <= burst + rate * elapsed (the documented limit)."""
    bucket = TokenBucket(rate=10.0, burst=20)
    now = 0.0
    granted = 0
    for gap in gaps:
        now += gap
        granted += bucket.try_take(now)
    assert granted <= 20 + 10.0 * now + 1e-6


def test_faults_from_json_rejects_unknown_keys_and_bad_values() -> None:
    """A control payload with an unknown key or an out-of-range value is refused with a reason."""
    with pytest.raises(SimulatorConfigError, match="unknown Faults key"):
        Faults.from_json({"eror_rate": 0.5})
    with pytest.raises(SimulatorConfigError, match="error_rate must be a fraction"):
        Faults.from_json({"error_rate": 2})
    with pytest.raises(SimulatorConfigError, match="5xx"):
        Faults.from_json({"error_status": 404})
    with pytest.raises(SimulatorConfigError, match="reset must be one of"):
        Faults.from_json({"reset": "sometimes"})
    assert Faults.from_json({}) == Faults()
    assert not Faults.from_json({}).active
    assert Faults.from_json({"latency": 0.5}).active


def test_settings_evolve_keeps_unnamed_fields() -> None:
    """Changing one setting from JSON keeps the others; bad keys are refused."""
    settings = SimSettings(api_key="k").evolve_from_json({"webhook_rate": 50})
    assert (settings.webhook_rate, settings.api_key) == (50, "k")
    with pytest.raises(SimulatorConfigError, match="webhook_burst must be > 0"):
        settings.evolve_from_json({"webhook_burst": 0})
    with pytest.raises(SimulatorConfigError, match="expected a JSON object"):
        WebhookConfig.from_json([])  # type: ignore[arg-type]


def _post(sim: Simulator, webhook: str, payload: Any, headers: dict[str, str] = JSON) -> int:
    return sim.handle_webhook(webhook, headers, json.dumps(payload).encode(), False).status


def test_webhook_bucket_is_shared_by_all_webhooks_and_paced_by_the_clock() -> None:
    """Every webhook draws from one workspace bucket; time on the injected clock refills it."""
    clock = ManualClock()
    sim = Simulator(SimSettings(webhook_rate=10, webhook_burst=4), clock=clock)
    statuses = [_post(sim, f"w{i % 2}", {"i": i}) for i in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
    clock.now = 0.1
    assert [_post(sim, "w9", {}), _post(sim, "w9", {})] == [200, 429]
    assert sim.row_count("w0") + sim.row_count("w1") + sim.row_count("w9") == 5


def test_rows_beyond_rows_kept_are_dropped_but_counted() -> None:
    """Only the newest rows_kept bodies stay; row_count stays exact."""
    sim = Simulator(SimSettings(rows_kept=3), clock=ManualClock())
    for i in range(5):
        assert _post(sim, "w", {"i": i}) == 200
    assert sim.row_count("w") == 5
    assert [(row.seq, row.body) for row in sim.rows("w")] == [
        (3, {"i": 2}),
        (4, {"i": 3}),
        (5, {"i": 4}),
    ]


def test_unknown_webhook_is_404_when_auto_create_is_off() -> None:
    """With auto_create_webhooks=False only configured webhooks accept rows."""
    sim = Simulator(SimSettings(auto_create_webhooks=False), clock=ManualClock())
    sim.configure_webhook("known")
    assert _post(sim, "unknown", {}) == 404
    assert _post(sim, "known", {}) == 200


def test_error_draws_are_reproducible_from_the_seed() -> None:
    """The same plan (same seed) injects errors into the same request positions."""
    sim = Simulator()
    sim.set_faults(Faults(error_rate=0.5, seed=7))
    first = [sim.draw_error() for _ in range(50)]
    sim.set_faults(Faults(error_rate=0.5, seed=7))
    assert [sim.draw_error() for _ in range(50)] == first
    assert 500 in first
    assert None in first


def test_burst_counts_down_once_per_plan() -> None:
    """A burst of N errors is spent by the next N requests and restarts when the plan is set."""
    sim = Simulator()
    sim.set_faults(Faults(burst=2, error_status=502))
    assert [sim.draw_error() for _ in range(3)] == [502, 502, None]
    sim.set_faults(Faults(burst=1))
    assert [sim.draw_error() for _ in range(2)] == [500, None]


def test_reset_keeps_webhook_configs_and_clears_everything_else() -> None:
    """reset() forgets rows, counters and faults but a webhook's token survives."""
    sim = Simulator(clock=ManualClock())
    sim.configure_webhook("w", token="t")
    assert _post(sim, "w", {}, {**JSON, "x-clay-webhook-auth": "t"}) == 200
    sim.set_faults(Faults(hang=True))
    sim.reset()
    assert sim.row_count("w") == 0
    assert not sim.faults.active
    assert _post(sim, "w", {}) == 401
