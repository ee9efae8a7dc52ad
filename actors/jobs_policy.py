"""What happens to a job after an attempt, and what a job must be to be accepted: pure decisions.

- ``JobPolicy``: an operation's outbox settings (max attempts, backoff, lane, key rules, Clay's
  webhook rules); ``WebhookRules``: a row's size limit and a source's lifetime cap.
- ``check_row``: the checks Clay makes that would cost budget to learn from Clay (a JSON body
  that encodes, a row under the size limit, the JSON content type): a row that can never
  succeed is refused at submit with ``bad_request``, not dead-lettered an hour later.
- ``job_backoff``: ``min(cap, base * 2**(n-1))``, jittered into its upper half.
- ``judge``: the verdict on one attempt. In order:
  a final answer below 400 is ``done``; a 429 is deferred (Clay dropped the row unread: no
  attempt burns, the gate's closure paces the next); a 403 "Record limit reached" on a webhook
  is ``dead`` with ``quota_exhausted``; 408 and 425 retry; every other 4xx is final: ``dead``,
  ``rejected``. A refusal before a byte left (``breaker_open``, ``rate_limited``, ``lane_full``,
  a connect failure, a lane or deadline timeout before sending) is deferred without burning.
  A failure that leaves the job in doubt (no answer after the request may have arrived, on an
  operation not safe to repeat) is ``dead``, ``in_doubt``: repeating it could make a second
  row. Other failures (a 5xx, a timeout of a repeatable operation) retry, unless the breaker
  refuses calls now: then the failure was part of an outage and is deferred, so an outage
  never spends attempts. A retry past ``max_attempts`` is ``dead``, ``max_attempts``. The
  daemon's own refusals that no retry can cure (``bad_request``, ``unknown_operation``) are
  ``dead``, ``refused``.
- ``apply_judgement`` / ``start_attempt`` / ``recover_in_doubt``: the job after each step.
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Mapping
from typing import Any, Final

import attrs

from claykiln.actors.call import CallResult, check_headers
from claykiln.actors.errors import BadRequestRefusal, Refusal, TimeoutRefusal, UpstreamRefusal
from claykiln.actors.idempotency_keys import failure_leaves_doubt
from claykiln.actors.jobs import Attempt, Job, JobState
from claykiln.actors.upstream_http import NO_JSON

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_CAP",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_POLICY",
    "DEFER_CODES",
    "REASONS",
    "RECORD_LIMIT",
    "JobPolicy",
    "Judgement",
    "OutboxSettings",
    "Verdict",
    "WebhookRules",
    "apply_judgement",
    "check_row",
    "job_backoff",
    "judge",
    "recover_in_doubt",
    "start_attempt",
]

_ROW_JSON: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
"""How a row goes to Clay (compact), for its size; one encoder, built once."""

DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_BACKOFF_BASE: Final = 2.0
DEFAULT_BACKOFF_CAP: Final = 600.0
DEFER_CODES: Final = frozenset({"breaker_open", "rate_limited", "lane_full"})
"""Refusals made before the request left: the job waits, no attempt burns."""
FINAL_CODES: Final = frozenset({"bad_request", "unknown_operation", "forbidden"})
RETRY_STATUSES: Final = frozenset({408, 425})
RECORD_LIMIT: Final = "record limit reached"
ERROR_EXCERPT: Final = 300
REASONS: Final = (
    "max_attempts",
    "rejected",
    "in_doubt",
    "quota_exhausted",
    "refused",
    "killed",
    "call_failed",
)
"""Why a job is dead: attempts spent; a final 4xx; in doubt after a crash or an unanswered
send; the webhook source's lifetime cap; a refusal no retry cures; an operator's kill; a
``call`` with ``on_failure = "dlq"`` that failed."""


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        msg = f"{attribute.name} must be > 0, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class WebhookRules:
    """Clay's table webhook: ``max_row`` bytes of JSON per request (Clay: 100 KB), and
    ``lifetime_rows`` a source accepts in its life (Clay: 50,000, then 403 "Record limit
    reached for webhook")."""

    max_row: int = attrs.field(default=100_000, validator=_positive)
    lifetime_rows: int = attrs.field(default=50_000, validator=_positive)


@attrs.frozen
class JobPolicy:
    """An operation's outbox settings. ``lane``: the lane jobs run in (None: the operation's).
    ``derive_key``: a submit without a key gets the derived one (``idempotency = "derive"``),
    so the same row submitted twice is one job. ``key_field``: the row field the key is
    stamped into (which also makes the job safe to repeat)."""

    max_attempts: int = attrs.field(default=DEFAULT_MAX_ATTEMPTS, validator=_positive)
    base: float = attrs.field(default=DEFAULT_BACKOFF_BASE, validator=_positive)
    cap: float = attrs.field(default=DEFAULT_BACKOFF_CAP, validator=_positive)
    lane: str | None = None
    derive_key: bool = False
    key_field: str | None = None
    webhook: WebhookRules | None = None


DEFAULT_POLICY: Final = JobPolicy()


def job_backoff(policy: JobPolicy, n: int, rng: random.Random) -> float:
    """Seconds to wait after the ``n``-th failure in a row (1-based): ``d = min(cap, base *
    2**(n-1))``, jittered uniformly into ``[d/2, d]`` so waiting jobs do not move in step."""
    ceiling = min(policy.cap, policy.base * 2.0 ** min(max(n, 1) - 1, 62))
    return rng.uniform(ceiling / 2, ceiling)


def check_row(
    policy: JobPolicy,
    operation: str,
    json_body: Any,
    body: bytes | None,
    headers: Mapping[str, str],
) -> None:
    """Refuse (``BadRequestRefusal``) a request the upstream is certain to refuse: bad headers
    for any operation; for a webhook, a missing body, JSON that does not encode, a raw body
    that is not JSON, a content type other than application/json, a row over ``max_row``."""
    check_headers(headers)
    rules = policy.webhook
    if rules is None:
        return
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if ctype is not None and ctype.partition(";")[0].strip().lower() != "application/json":
        msg = f"{operation}: a webhook row is sent as application/json, not {ctype!r}"
        raise BadRequestRefusal(msg)
    if json_body is not NO_JSON:
        try:
            size = len(_ROW_JSON.encode(json_body).encode())
        except (TypeError, ValueError, RecursionError) as exc:
            msg = f"{operation}: the row cannot be encoded as JSON ({exc}); send plain values"
            raise BadRequestRefusal(msg) from exc
    elif body is not None:
        if ctype is None:
            msg = f"{operation}: a raw webhook body needs the header content-type: application/json"
            raise BadRequestRefusal(msg)
        try:
            json.loads(body)
        except (ValueError, RecursionError) as exc:
            msg = f"{operation}: the raw body is not valid JSON ({exc}); Clay would answer 400"
            raise BadRequestRefusal(msg) from exc
        size = len(body)
    else:
        msg = f"{operation}: a webhook row needs a JSON body (json=...)"
        raise BadRequestRefusal(msg)
    if size > rules.max_row:
        msg = (
            f"{operation}: the row is {size} bytes of JSON; Clay accepts at most "
            f"{rules.max_row} per request: split it or drop fields"
        )
        raise BadRequestRefusal(msg, details={"size": size, "max_row": rules.max_row})


class Verdict(enum.Enum):
    DONE = "done"
    RETRY = "retry"  # burned: wait the backoff, then again (or dead past max_attempts)
    DEFER = "defer"  # not burned: wait, then again
    DEAD = "dead"


@attrs.frozen
class Judgement:
    """The verdict on one attempt, the history entry it adds, the wait before the next try,
    why a dead job is dead, and what a done one answered (``result``)."""

    verdict: Verdict
    entry: Attempt
    delay: float = 0.0
    reason: str | None = None
    result: Mapping[str, Any] | None = None


def _excerpt(text: str) -> str:
    return text if len(text) <= ERROR_EXCERPT else text[:ERROR_EXCERPT] + "..."


def _body_text(body: Any) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    if isinstance(body, str):
        return body
    return json.dumps(body, default=str)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def judge(
    outcome: CallResult | Refusal,
    *,
    job: Job,
    policy: JobPolicy,
    repeatable: bool,
    breaker_refusing: bool,
    now: float,
    duration_ms: float,
    rng: random.Random,
) -> Judgement:
    """The verdict on one attempt of ``job`` that ended with ``outcome`` (see the module
    docstring for the rules). ``breaker_refusing``: the operation's breaker refuses calls now."""
    if isinstance(outcome, CallResult):
        return _judge_answer(outcome, job, policy, now, duration_ms, rng)
    error = _excerpt(f"{outcome.code}: {outcome.message}")
    details = outcome.details or {}
    label = f"status {details['status']}" if "status" in details else outcome.code

    def entry(burned: bool) -> Attempt:
        return Attempt(now, label, burned=burned, error=error, duration_ms=duration_ms)

    def defer(delay: float | None = None) -> Judgement:
        wait = job_backoff(policy, job.deferrals + 1, rng)
        return Judgement(Verdict.DEFER, entry(False), delay=max(wait, delay or 0.0))

    if outcome.code == "breaker_open":
        # Its retry_after is a hint about the next probe (up to the probe timeout while one
        # runs); the scheduler looks at the breaker itself before starting a job.
        return defer()
    if outcome.code in DEFER_CODES:
        return defer(outcome.retry_after)
    if outcome.code in FINAL_CODES:
        return Judgement(Verdict.DEAD, entry(False), reason="refused")
    if isinstance(outcome, TimeoutRefusal | UpstreamRefusal):
        if failure_leaves_doubt(outcome, repeatable=repeatable):
            return Judgement(Verdict.DEAD, entry(True), reason="in_doubt")
        if "status" not in details and not details.get("sent", True):
            return defer(outcome.retry_after)
        if breaker_refusing:
            return defer(outcome.retry_after)
    return _retry(job, policy, entry(True), rng, outcome.retry_after)


def _judge_answer(
    result: CallResult,
    job: Job,
    policy: JobPolicy,
    now: float,
    duration_ms: float,
    rng: random.Random,
) -> Judgement:
    status = result.status
    label = f"status {status}"
    if status < 400:
        entry = Attempt(now, label, burned=True, duration_ms=duration_ms)
        answer = {"status": status, "attempts": result.attempts}
        return Judgement(Verdict.DONE, entry, result=answer)
    text = _excerpt(_body_text(result.body))
    if status == 429:
        entry = Attempt(now, label, burned=False, error=text, duration_ms=duration_ms)
        wait = job_backoff(policy, job.deferrals + 1, rng)
        delay = max(wait, _retry_after(result.headers) or 1.0)
        return Judgement(Verdict.DEFER, entry, delay=delay)
    entry = Attempt(now, label, burned=True, error=text, duration_ms=duration_ms)
    if status == 403 and policy.webhook is not None and RECORD_LIMIT in text.lower():
        return Judgement(Verdict.DEAD, entry, reason="quota_exhausted")
    if status in RETRY_STATUSES:
        return _retry(job, policy, entry, rng, _retry_after(result.headers))
    return Judgement(Verdict.DEAD, entry, reason="rejected")


def _retry(
    job: Job, policy: JobPolicy, entry: Attempt, rng: random.Random, retry_after: float | None
) -> Judgement:
    if job.attempts + 1 >= job.max_attempts:
        return Judgement(Verdict.DEAD, entry, reason="max_attempts")
    delay = max(job_backoff(policy, job.attempts + 1, rng), retry_after or 0.0)
    return Judgement(Verdict.RETRY, entry, delay=delay)


def _waiting_state(attempts: int) -> JobState:
    return JobState.PENDING if attempts == 0 else JobState.RETRY_WAIT


def start_attempt(job: Job, boot: int) -> Job:
    """``job`` taken in flight by the process of boot count ``boot``."""
    return attrs.evolve(job, state=JobState.IN_FLIGHT, boot=boot)


def apply_judgement(job: Job, judgement: Judgement, now: float) -> Job:
    """``job`` after an attempt judged ``judgement`` at wall time ``now``."""
    entry = judgement.entry
    attempts = job.attempts + (1 if entry.burned else 0)
    verdict = judgement.verdict
    if verdict is Verdict.DONE:
        return job.with_entry(
            entry,
            state=JobState.DONE,
            attempts=attempts,
            deferrals=0,
            boot=None,
            done_at=now,
            result=judgement.result,
            error=None,
        )
    if verdict is Verdict.DEAD:
        return job.with_entry(
            entry,
            state=JobState.DEAD,
            attempts=attempts,
            boot=None,
            dead_at=now,
            reason=judgement.reason,
            error=entry.error or entry.outcome,
        )
    deferrals = 0 if verdict is Verdict.RETRY else job.deferrals + 1
    return job.with_entry(
        entry,
        state=_waiting_state(attempts),
        attempts=attempts,
        deferrals=deferrals,
        boot=None,
        due_at=now + judgement.delay,
        error=entry.error or entry.outcome,
    )


def recover_in_doubt(job: Job, now: float, *, repeatable: bool) -> Job:
    """A job found in flight at start-up, left by an earlier boot: due again now when the
    operation is safe to repeat, else dead with reason ``in_doubt``."""
    why = (
        f"the daemon stopped (boot {job.boot}) while this job was in flight; the request may "
        "have reached the upstream"
    )
    if repeatable:
        entry = Attempt(now, "in_doubt", burned=False, error=why + "; safe to repeat: requeued")
        return job.with_entry(
            entry, state=_waiting_state(job.attempts), boot=None, due_at=now, error=why
        )
    entry = Attempt(now, "in_doubt", burned=True, error=why + "; not safe to repeat")
    return job.with_entry(
        entry,
        state=JobState.DEAD,
        attempts=job.attempts + 1,
        boot=None,
        dead_at=now,
        reason="in_doubt",
        error=why,
    )


@attrs.frozen
class OutboxSettings:
    """The outbox as configured: ``concurrency`` jobs in flight at once, done jobs kept
    ``done_retention`` seconds, the DLQ size above which health is degraded
    (``dlq_degraded``), the pace of an operator's retry (``retry_rate`` jobs per second), and
    each operation's ``JobPolicy`` (``DEFAULT_POLICY`` for one not listed)."""

    concurrency: int = attrs.field(default=4, validator=_positive)
    done_retention: float = attrs.field(default=86_400.0, validator=_positive)
    dlq_degraded: int = 100
    retry_rate: float = attrs.field(default=10.0, validator=_positive)
    policies: Mapping[str, JobPolicy] = attrs.field(factory=dict)

    def policy(self, operation: str) -> JobPolicy:
        """The outbox policy of ``operation``."""
        return self.policies.get(operation, DEFAULT_POLICY)
