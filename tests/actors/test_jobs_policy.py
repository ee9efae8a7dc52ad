"""What happens to a job after an attempt, and which rows are refused at submit: pure rules."""

from __future__ import annotations

import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jobs_fixture import make_job

from claykiln.actors.call import CallResult
from claykiln.actors.errors import (
    BadRequestRefusal,
    BreakerOpenRefusal,
    LaneFullRefusal,
    RateLimitedRefusal,
    TimeoutRefusal,
    UnknownOperationRefusal,
    UpstreamRefusal,
)
from claykiln.actors.jobs import Job, JobState
from claykiln.actors.jobs_policy import (
    JobPolicy,
    Verdict,
    WebhookRules,
    apply_judgement,
    check_row,
    job_backoff,
    judge,
    recover_in_doubt,
    start_attempt,
)
from claykiln.actors.upstream_http import NO_JSON

WEBHOOK = JobPolicy(webhook=WebhookRules(max_row=100, lifetime_rows=10))
PLAIN = JobPolicy(max_attempts=3, base=1.0, cap=8.0)
NOW = 1_700_000_100.0


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> CallResult:
    return CallResult(status, headers or {}, body, attempts=1, duration_ms=3.0)


def verdict(outcome: object, job: Job | None = None, **kw: object) -> object:
    args: dict[str, object] = {
        "job": job or make_job(),
        "policy": WEBHOOK,
        "repeatable": False,
        "breaker_refusing": False,
        "now": NOW,
        "duration_ms": 3.0,
        "rng": random.Random(1),
    }
    args.update(kw)
    return judge(outcome, **args)  # type: ignore[arg-type]


@given(n=st.integers(1, 80), seed=st.integers(0, 1000))
def test_backoff_doubles_to_the_cap_within_its_upper_half(n: int, seed: int) -> None:
    """min(cap, base * 2**(n-1)), jittered into [d/2, d]."""
    delay = job_backoff(PLAIN, n, random.Random(seed))
    ceiling = min(PLAIN.cap, PLAIN.base * 2 ** (n - 1))
    assert ceiling / 2 <= delay <= ceiling


def test_a_2xx_is_done_and_burns_the_attempt() -> None:
    """Done, with the status and the pipeline's attempts kept as the result."""
    j = verdict(answer(200, {"status": "ok"}))
    assert j.verdict is Verdict.DONE and j.entry.burned
    assert j.result == {"status": 200, "attempts": 1}


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 422])
def test_a_final_4xx_is_dead_at_once(status: int) -> None:
    """Any 4xx but 408, 425 and 429 is the upstream's final no: dead, rejected."""
    j = verdict(answer(status, {"message": "nope"}))
    assert (j.verdict, j.reason) == (Verdict.DEAD, "rejected")
    assert "nope" in (j.entry.error or "")


@pytest.mark.parametrize("status", [408, 425])
def test_408_and_425_retry(status: int) -> None:
    """'Not now' answers retry and burn an attempt."""
    j = verdict(answer(status))
    assert j.verdict is Verdict.RETRY and j.entry.burned


def test_a_429_is_deferred_for_at_least_its_retry_after() -> None:
    """Clay dropped the row unread: no attempt burns, the wait honors Retry-After."""
    j = verdict(answer(429, {"type": "TooManyRequests"}, {"retry-after": "7"}))
    assert j.verdict is Verdict.DEFER and not j.entry.burned
    assert j.delay >= 7.0


def test_the_record_limit_403_exhausts_the_quota() -> None:
    """403 'Record limit reached for webhook' on a webhook: dead, quota_exhausted."""
    j = verdict(answer(403, {"message": "Record limit reached for webhook"}))
    assert (j.verdict, j.reason) == (Verdict.DEAD, "quota_exhausted")
    plain = verdict(answer(403, {"message": "Record limit reached"}), policy=PLAIN)
    assert plain.reason == "rejected"  # not a webhook operation: an ordinary 403


@pytest.mark.parametrize(
    "error",
    [
        BreakerOpenRefusal("open", retry_after=4.0),
        RateLimitedRefusal("closed", retry_after=4.0),
        LaneFullRefusal("full", retry_after=4.0),
        UpstreamRefusal("refused", details={"kind": "connect", "sent": False}),
        TimeoutRefusal("lane", details={"stage": "lane", "sent": False}),
    ],
)
def test_refusals_before_sending_defer_without_burning(error: Exception) -> None:
    """breaker_open, rate_limited, lane_full and failures before a byte left wait, unburned."""
    j = verdict(error)
    assert j.verdict is Verdict.DEFER and not j.entry.burned
    if error.retry_after and error.code != "breaker_open":  # type: ignore[attr-defined]
        assert j.delay >= 4.0  # a gate's Retry-After or a lane's hint is honored


def test_an_unanswered_send_of_a_push_is_in_doubt() -> None:
    """A reset or timeout after the request left, on an operation not safe to repeat: dead,
    in_doubt (repeating it could make a second row)."""
    reset = UpstreamRefusal("reset", details={"kind": "reset", "sent": True, "retryable": True})
    assert verdict(reset).reason == "in_doubt"
    timeout = TimeoutRefusal("slow", details={"stage": "request", "sent": True})
    assert verdict(timeout).reason == "in_doubt"
    assert verdict(timeout, repeatable=True).verdict is Verdict.RETRY


def test_a_5xx_retries_and_attempts_run_out() -> None:
    """A 5xx retries with backoff; the last allowed attempt makes the job dead, max_attempts."""
    error = UpstreamRefusal("503", details={"status": 503, "attempts": 1})
    j = verdict(error, policy=PLAIN, job=make_job(max_attempts=3, attempts=1))
    assert j.verdict is Verdict.RETRY and 1.0 <= j.delay <= 2.0
    last = verdict(error, policy=PLAIN, job=make_job(max_attempts=3, attempts=2))
    assert (last.verdict, last.reason) == (Verdict.DEAD, "max_attempts")


def test_a_failure_while_the_breaker_refuses_is_part_of_an_outage() -> None:
    """A 5xx after which the breaker refuses calls is deferred: an outage spends no attempts."""
    error = UpstreamRefusal("503", details={"status": 503})
    job = make_job(max_attempts=3, attempts=2)
    j = verdict(error, job=job, policy=PLAIN, breaker_refusing=True)
    assert j.verdict is Verdict.DEFER and not j.entry.burned


def test_refusals_no_retry_cures_are_dead_refused() -> None:
    """bad_request and unknown_operation from the pipeline: dead, refused, unburned."""
    for error in (BadRequestRefusal("bad"), UnknownOperationRefusal("gone")):
        j = verdict(error)
        assert (j.verdict, j.reason, j.entry.burned) == (Verdict.DEAD, "refused", False)


def test_apply_moves_the_job_through_its_states() -> None:
    """in_flight -> retry_wait (attempts + 1, due later) -> in_flight -> done."""
    job = start_attempt(make_job(), boot=2)
    assert job.state is JobState.IN_FLIGHT and job.boot == 2
    error = UpstreamRefusal("503", details={"status": 503})
    failed = apply_judgement(job, verdict(error, job=job, policy=PLAIN), NOW)
    assert (failed.state, failed.attempts, failed.boot) == (JobState.RETRY_WAIT, 1, None)
    assert NOW + 0.5 <= failed.due_at <= NOW + 1.0
    done = apply_judgement(start_attempt(failed, 2), verdict(answer(201)), NOW + 2)
    assert (done.state, done.attempts, done.done_at) == (JobState.DONE, 2, NOW + 2)
    assert [e.outcome for e in done.history] == ["status 503", "status 201"]


def test_a_deferred_job_keeps_its_attempts_and_counts_the_deferral() -> None:
    """An unburned outcome leaves attempts alone; a never-tried job stays pending."""
    job = start_attempt(make_job(), boot=1)
    deferred = apply_judgement(job, verdict(RateLimitedRefusal("closed", retry_after=2.0)), NOW)
    assert (deferred.state, deferred.attempts, deferred.deferrals) == (JobState.PENDING, 0, 1)
    assert deferred.due_at >= NOW + 2.0


def test_a_job_in_doubt_after_a_crash() -> None:
    """Requeued when safe to repeat; else dead, in_doubt, with the attempt counted."""
    job = start_attempt(make_job(attempts=1, state=JobState.RETRY_WAIT), boot=5)
    again = recover_in_doubt(job, NOW, repeatable=True)
    assert (again.state, again.due_at, again.attempts) == (JobState.RETRY_WAIT, NOW, 1)
    dead = recover_in_doubt(job, NOW, repeatable=False)
    assert (dead.state, dead.reason, dead.attempts) == (JobState.DEAD, "in_doubt", 2)
    assert "boot 5" in (dead.error or "")


def test_rows_clay_would_refuse_are_refused_at_submit() -> None:
    """No body, JSON that does not encode, a raw body that is not JSON, the wrong content
    type and a row over the limit are bad_request; a good row passes."""
    check_row(WEBHOOK, "push", {"a": 1}, None, {})
    check_row(WEBHOOK, "push", NO_JSON, b'{"a": 1}', {"Content-Type": "application/json"})
    cases = [
        (NO_JSON, None, {}),
        ({"a": b"\x00bytes"}, None, {}),
        ({"a": float("nan")}, None, {}),
        (NO_JSON, b"{not json", {"content-type": "application/json"}),
        (NO_JSON, b"{}", {}),
        ({"a": 1}, None, {"content-type": "text/plain"}),
        ({"a": "x" * 200}, None, {}),
    ]
    for json_body, body, headers in cases:
        with pytest.raises(BadRequestRefusal):
            check_row(WEBHOOK, "push", json_body, body, headers)


def test_rows_of_plain_operations_only_get_the_header_check() -> None:
    """Without webhook rules any body goes; reserved headers are still refused."""
    check_row(PLAIN, "start", NO_JSON, None, {})
    check_row(PLAIN, "start", {"a": b"bytes"}, None, {"x-trace": "1"})
    with pytest.raises(BadRequestRefusal):
        check_row(PLAIN, "start", NO_JSON, None, {"Host": "evil.example"})


def test_policies_refuse_nonsense() -> None:
    """max_attempts, base and cap must be positive."""
    with pytest.raises(ValueError, match="max_attempts"):
        JobPolicy(max_attempts=0)
    assert attrs.evolve(PLAIN, base=0.5).base == 0.5
