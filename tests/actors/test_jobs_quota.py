"""Clay's lifetime cap per webhook source: counting, alert levels, holds and their release."""

from __future__ import annotations

from claykiln.actors.jobs_quota import QUOTA_TABLE, SourceQuota, quota_put, source_name


def test_alerts_come_once_at_80_and_95_percent() -> None:
    """Counting 100 rows against a cap of 100 crosses 80 % once and 95 % once."""
    quota = SourceQuota(source_name("clay", "/v3/sources/webhook/w1"))
    crossed = []
    for _ in range(99):
        quota, level = quota.count_row(100, now=1.0)
        if level is not None:
            crossed.append((quota.rows, level))
    assert crossed == [(80, 80), (95, 95)]
    assert not quota.held


def test_reaching_the_cap_holds_the_source() -> None:
    """The row that reaches the cap holds the source (held_by count)."""
    quota = SourceQuota("s", rows=9, alerted=95)
    quota, level = quota.count_row(10, now=5.0)
    assert level is None
    assert (quota.held, quota.held_by, quota.held_at, quota.rows) == (True, "count", 5.0, 10)


def test_a_record_limit_403_holds_and_a_release_opens() -> None:
    """Clay's 403 holds the source (held_by clay); a release opens it, the count kept."""
    held = SourceQuota("s", rows=3).exhausted(now=7.0)
    assert (held.held, held.held_by) == (True, "clay")
    assert held.exhausted(now=9.0).held_at == 7.0  # already held: unchanged
    opened = held.released()
    assert (opened.held, opened.rows) == (False, 3)
    # Past the cap after a release, counting does not hold again (only a new 403 does).
    assert not SourceQuota("s", rows=12).count_row(10, now=1.0)[0].held


def test_the_stored_value_round_trips_and_garbage_reads_as_zero() -> None:
    """to_value / from_value keep every field; a malformed value is a fresh count."""
    quota = SourceQuota("s", rows=5, alerted=80, held_at=2.0, held_by="clay", cap=10)
    put = quota_put(quota)
    assert (put.table, put.key) == (QUOTA_TABLE, b"s")
    assert SourceQuota.from_value("s", put.value) == quota
    assert SourceQuota.from_value("s", "junk") == SourceQuota("s")
    assert quota.to_wire()["used"] == 0.5
