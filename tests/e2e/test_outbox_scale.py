"""The outbox at scale: a real daemon started on 1,000,000 waiting jobs (seeded through the
storage layer) against one on 1,000, in the same run: start-up time and resident memory stay
within a generous ratio, the counts are exact, and ``dlq.list`` pages stay fast next to the
small store's. Slow (seeding 1.1M jobs takes about a minute); the figures are printed and the
same measurement is ``kiln bench --scenario outbox-scale``."""

from __future__ import annotations

from pathlib import Path

import pytest

from claykiln.daemon.bench.outbox import scale_run

RATIO = 3.0  # generous: the point is "flat", not a speed figure (that is kiln bench's)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_million_waiting_jobs_start_like_a_thousand(tmp_path: Path) -> None:
    """READY time (without the store's integrity walk) and RSS with 1M waiting (+100k dead)
    jobs within 3x of 1k (+100); every job counted; a dlq.list page (filtered or not) within
    10x of the small store's, plus 5 ms."""
    small = scale_run(tmp_path / "small", 1_000, 100)
    big = scale_run(tmp_path / "big", 1_000_000, 100_000)
    print(f"\nscale: small {small}\nscale: big {big}")
    assert (small["pending"], small["dlq"]) == (1_000, 100)
    assert (big["pending"], big["dlq"]) == (1_000_000, 100_000)
    # The integrity walk reads every record at each start, on purpose (about 0.7-1 s per
    # million): judged is the rest of the start-up, which must not grow with the jobs.
    assert big["startup_unchecked_s"] <= RATIO * small["startup_unchecked_s"]
    assert big["store_check_s"] > small["store_check_s"]
    assert big["rss_mb"] <= RATIO * small["rss_mb"]
    for page in ("page_ms_p50", "filtered_page_ms_p50"):
        assert big[page] <= 10 * small[page] + 5.0
