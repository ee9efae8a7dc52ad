"""Smoke tests of the outbox's ``kiln bench`` scenarios: each runs tiny and returns a
well-formed result (figures are the benchmark's business, never asserted here)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from claykiln.daemon.bench import outbox as bench_outbox
from claykiln.daemon.bench.measure import BenchOptions

RESULT_KEYS = {"scenario", "target", "ratio", "meets_target", "headline", "details", "notes"}


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kb-", dir="/tmp"))  # short socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_submit_measures_fsync_sync_off_and_batches(workdir: Path) -> None:
    """Both daemons acknowledge every submit; submit_many counts jobs per second."""
    result = bench_outbox.bench_submit(BenchOptions(duration=0.4, concurrency=4, workdir=workdir))
    assert set(result) == RESULT_KEYS and result["scenario"] == "submit"
    details = result["details"]
    assert set(details["fsync"]["codes"]) == {"ok"} and set(details["sync_off"]["codes"]) == {"ok"}
    assert details["fsync"]["transactions"] >= 1
    assert details["submit_many"]["jobs_per_s"] > 0


def test_drain_reads_the_arrivals_at_the_simulator(workdir: Path) -> None:
    """Every queued job arrives; the measured rate and the 429s are reported per rate."""
    result = bench_outbox.bench_drain(BenchOptions(duration=0.5, concurrency=4, workdir=workdir))
    runs = result["details"]["runs"]
    assert [run["configured"] for run in runs] == [10.0, 100.0]
    assert all(run["measured"] > 0 and run["too_many_requests"] == 0 for run in runs)


def test_scale_starts_a_daemon_on_each_seeded_store(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small sizes: both stores seeded, both daemons ready, every job counted."""
    monkeypatch.setattr(bench_outbox, "SCALE_SIZES", ((50, 5), (500, 50)))
    result = bench_outbox.bench_outbox_scale(
        BenchOptions(duration=0.5, concurrency=4, workdir=workdir)
    )
    small, big = result["details"]["small"], result["details"]["big"]
    assert (small["pending"], small["dlq"], big["pending"], big["dlq"]) == (50, 5, 500, 50)
    assert small["startup_s"] > 0 and big["rss_mb"] > 0
    # The integrity walk's time comes from the daemon's own daemon.started event: a store with
    # records is walked, and the judged start-up is the rest.
    for run in (small, big):
        assert 0 < run["store_check_s"] < run["startup_s"]
        assert run["startup_unchecked_s"] == pytest.approx(
            run["startup_s"] - run["store_check_s"], abs=0.002
        )
    details = result["details"]
    assert details["startup_ratio"] == pytest.approx(
        big["startup_unchecked_s"] / small["startup_unchecked_s"]
    )
    judged = max(details["startup_ratio"], details["rss_ratio"])
    assert result["ratio"] == pytest.approx(judged, abs=0.001)  # rounded to 3 places
