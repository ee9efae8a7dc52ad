"""The health monitor's pure decisions: damping, windows, each input's verdict, the snapshot."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.health_checks import (
    WRITER_STALLED,
    CheckStatus,
    Counted,
    CredentialRejection,
    Damper,
    HealthSnapshot,
    LaneSample,
    LaneSaturation,
    Level,
    Verdict,
    breakers_verdict,
    credentials_verdict,
    dead_letters_verdict,
    format_bytes,
    liveness_verdict,
    reachability_verdict,
    storage_verdict,
)

OK = Verdict(Level.HEALTHY, "ok")
BAD = Verdict(Level.DEGRADED, "bad")
WORSE = Verdict(Level.UNHEALTHY, "worse")


def test_a_check_gets_worse_at_once() -> None:
    """A worse reading is published at the reading that shows it, and reported as a change."""
    damper = Damper(OK, 0.0)
    assert damper.observe(BAD, 1.0, hold=30.0) == OK
    assert (damper.published, damper.since) == (BAD, 1.0)
    assert damper.observe(WORSE, 2.0, hold=30.0) == BAD


def test_a_check_gets_better_only_after_hold_without_relapse() -> None:
    """Better readings are published once no worse one came for ``hold``; a relapse restarts."""
    damper = Damper(OK, 0.0)
    damper.observe(BAD, 0.0, hold=10.0)
    for t in range(1, 10):
        assert damper.observe(OK, float(t), hold=10.0) is None
    damper.observe(BAD, 9.5, hold=10.0)  # a relapse within hold
    assert damper.observe(OK, 15.0, hold=10.0) is None
    assert damper.observe(OK, 19.5, hold=10.0) == BAD
    assert damper.published == OK and damper.since == 19.5


def test_same_level_refreshes_the_reason_without_a_change() -> None:
    """A reading at the published level updates the reason (counts change) silently."""
    damper = Damper(BAD, 0.0)
    assert damper.observe(Verdict(Level.DEGRADED, "bad, 3 failures"), 1.0, hold=5.0) is None
    assert damper.published.reason == "bad, 3 failures"
    assert damper.since == 0.0


def test_a_check_steps_down_through_the_levels_it_saw() -> None:
    """Unhealthy, then a degraded reading, then healthy: degraded is published in between."""
    damper = Damper(OK, 0.0)
    damper.observe(WORSE, 0.0, hold=10.0)
    damper.observe(BAD, 5.0, hold=10.0)
    damper.observe(OK, 8.0, hold=10.0)
    assert damper.observe(OK, 10.0, hold=10.0) == WORSE
    assert damper.published == BAD
    assert damper.observe(OK, 15.0, hold=10.0) == BAD
    assert damper.published == OK


@given(
    st.lists(
        st.tuples(st.floats(0.01, 5.0), st.sampled_from(list(Level))), min_size=1, max_size=60
    ),
    st.floats(0.0, 20.0),
)
def test_published_level_is_the_worst_of_the_last_hold(
    steps: list[tuple[float, Level]], hold: float
) -> None:
    """Whatever the readings, the published level is the worst reading of (now - hold, now]
    (the newest always counts): damping never hides a worse state nor invents one."""
    damper = Damper(OK, 0.0)
    seen: list[tuple[float, Level]] = []
    now = 0.0
    for dt, level in steps:
        now += dt
        seen.append((now, level))
        damper.observe(Verdict(level, level.word), now, hold)
        window = [lv for t, lv in seen if t > now - hold] + [level]
        assert damper.published.level == max(window)


def test_counted_reads_growth_over_the_window() -> None:
    """A cumulative counter's growth over the last window, keeping one baseline sample."""
    counted = Counted()
    for t, value in ((0, 0), (10, 2), (20, 5), (70, 5)):
        counted.add(float(t), value, window=60.0)
    assert counted.recent() == 3  # from t=10 (the baseline at the window's start) to t=70
    counted.add(140.0, 5, window=60.0)
    assert counted.recent() == 0


def test_breakers_verdict_names_each_refusing_breaker() -> None:
    """Open, half-open and forced-open breakers degrade; closed and disabled ones do not."""
    assert breakers_verdict({"a": "closed", "b": "disabled"}).level is Level.HEALTHY
    verdict = breakers_verdict({"clay": "forced_open", "hook": "half_open", "x": "closed"})
    assert verdict.level is Level.DEGRADED
    assert verdict.reason == "breaker clay is forced_open, breaker hook is half_open"


def test_dead_letters_verdict_is_degraded_over_the_threshold() -> None:
    """More dead jobs than the threshold degrades; exactly the threshold does not."""
    assert dead_letters_verdict(100, 100).level is Level.HEALTHY
    over = dead_letters_verdict(101, 100)
    assert over.level is Level.DEGRADED and "101 jobs" in over.reason


def _storage(**kw: object) -> Verdict:
    args: dict[str, object] = {
        "used": 10,
        "ceiling": 100,
        "disk_bound": False,
        "failed_writes": 0,
        "stalled_for": 0.0,
        "queued": 0,
        "degraded_ratio": 0.8,
        "unhealthy_ratio": 0.95,
        "writer_stall": 30.0,
        "window": 60.0,
    }
    args.update(kw)
    return storage_verdict(**args)  # type: ignore[arg-type]


def test_storage_verdict_follows_usage_failures_and_stalls() -> None:
    """80 % of the ceiling degrades, 95 % or failing writes or a stalled writer is unhealthy."""
    assert _storage().level is Level.HEALTHY
    assert _storage(used=80).level is Level.DEGRADED
    full = _storage(used=96 * 2**20, ceiling=100 * 2**20, disk_bound=True)
    assert full.level is Level.UNHEALTHY
    assert full.reason == "storage 96% full (96.0 MiB of 100.0 MiB, the disk under the store)"
    failing = _storage(failed_writes=3)
    assert failing.level is Level.UNHEALTHY and "3 storage write(s) failed" in failing.reason
    stalled = _storage(stalled_for=31.0, queued=4)
    assert stalled.level is Level.UNHEALTHY and "committed nothing for 31 s" in stalled.reason
    assert _storage(stalled_for=31.0, queued=0).level is Level.HEALTHY  # idle is not stalled


def test_reachability_needs_failures_and_no_answer() -> None:
    """Unreachable: enough connect failures or timeouts and no answer at all in the window;
    critical upstreams are unhealthy, others degraded."""
    assert (
        reachability_verdict(answers=1, failures=50, min_failures=2, critical=True, window=60).level
        is Level.HEALTHY
    )
    assert (
        reachability_verdict(answers=0, failures=1, min_failures=2, critical=True, window=60).level
        is Level.HEALTHY
    )
    down = reachability_verdict(
        answers=0, failures=2, min_failures=2, critical=False, window=60, probe="failed (x)"
    )
    assert down.level is Level.DEGRADED and down.reason.endswith("last probe: failed (x)")
    assert (
        reachability_verdict(answers=0, failures=2, min_failures=2, critical=True, window=60).level
        is Level.UNHEALTHY
    )


def test_liveness_verdict_names_stopped_and_silent_actors() -> None:
    """A stopped actor or a liveness ask unanswered for the timeout is unhealthy; starting is
    neither."""
    states = {"gate": "running", "lanes": "stopped", "health": "starting"}
    verdict = liveness_verdict(states, {"gate": 12.0}, timeout=10.0)
    assert verdict.level is Level.UNHEALTHY
    assert verdict.reason == (
        "actor lanes is stopped; actor gate has not answered a liveness ask for 12 s"
    )
    fine = liveness_verdict({"gate": "running", "health": "starting"}, {"gate": 3.0}, 10.0)
    assert fine.level is Level.HEALTHY


def test_credentials_verdict_names_the_file() -> None:
    """A refused credential degrades, naming its file, and says when the file is missing."""
    assert credentials_verdict([]).level is Level.HEALTHY
    rejection = CredentialRejection("clay-api-key", "/creds/clay-api-key", "clay", "me", 401, True)
    verdict = credentials_verdict([rejection])
    assert verdict.level is Level.DEGRADED
    assert "credential clay-api-key (/creds/clay-api-key) rejected: clay answered 401 to me" in (
        verdict.reason
    )
    assert "the file is missing" in verdict.reason


def test_lane_saturation_counts_full_or_refusing_samples() -> None:
    """A lane full or refusing at every sample for the window degrades; one calm sample resets."""
    lanes = LaneSaturation()
    lanes.sample({"bulk": LaneSample(full=True, rejected=0)}, 0.0)
    lanes.sample({"bulk": LaneSample(full=False, rejected=5)}, 10.0)  # refusing
    assert lanes.verdict(20.0, window=30.0).level is Level.HEALTHY
    lanes.sample({"bulk": LaneSample(full=True, rejected=5)}, 30.0)
    verdict = lanes.verdict(30.0, window=30.0)
    assert verdict.level is Level.DEGRADED and "lane bulk saturated for 30 s" in verdict.reason
    lanes.sample({"bulk": LaneSample(full=False, rejected=5)}, 31.0)  # calm
    assert lanes.verdict(31.0, window=30.0).level is Level.HEALTHY


def test_snapshot_summary_problems_and_wire() -> None:
    """The snapshot lists problems worst first, sums up for STATUS= and renders for status."""
    snapshot = HealthSnapshot(
        Level.UNHEALTHY,
        (
            CheckStatus("breakers", Level.DEGRADED, "breaker clay is open", 5.0),
            CheckStatus("storage", Level.UNHEALTHY, "storage 97% full", 8.0),
            CheckStatus("lanes", Level.HEALTHY, "no lane saturated", 0.0),
        ),
        at=9.0,
        stuck=(WRITER_STALLED,),
    )
    assert snapshot.problems() == ["storage: storage 97% full", "breakers: breaker clay is open"]
    assert snapshot.summary() == "unhealthy: storage: storage 97% full (+1 more)"
    wire = snapshot.to_wire(now=10.0, wall_now=1000.0)
    assert wire["state"] == "unhealthy" and wire["stuck"] == [WRITER_STALLED]
    assert wire["checks"]["breakers"] == {
        "state": "degraded",
        "reason": "breaker clay is open",
        "since": 995.0,
        "for_s": 5.0,
    }
    assert HealthSnapshot(Level.HEALTHY, (), 0.0).summary() == "healthy"


def test_format_bytes_uses_binary_units() -> None:
    """Sizes read in binary units with one decimal: 4 GiB is 4.0 GiB, not 4295 MB."""
    assert format_bytes(4 * 2**30) == "4.0 GiB"
    assert format_bytes(16384) == "16.0 KiB"
    assert format_bytes(512) == "512 B"
