"""Retry decisions for upstream calls: pure functions, no awaits, no clock of their own.

The pipeline asks :func:`plan_retry` after every attempt; it answers "stop" (with a reason) or
"retry after D seconds". Rules, in order:

- a success (any status below 400 that is not retryable) stops;
- attempts are capped: ``policy.attempts`` counts every try, the first included;
- only retryable outcomes are retried: HTTP 408, 429, 500, 502, 503, 504 (never another 4xx),
  and transport errors the upstream executor marks ``retryable`` (timeouts, connect failures,
  resets, protocol errors; never "too_large");
- a POST or PATCH is retried only when its operation is ``repeat_safe`` or the failure happened
  before the request could have reached the upstream (``sent=False``, a connect failure);
  GET, HEAD, PUT, DELETE, OPTIONS and TRACE are repeat-safe by HTTP semantics;
- the delay is capped exponential backoff with full jitter; a Retry-After from the upstream is a
  floor that wins over the cap (the upstream said when it will take the call; coming back sooner
  only burns an attempt on another 429/503);
- no retry is planned whose delay would end at or past the caller's deadline.

Beyond a single call, ``RetryBudget`` keeps retries from amplifying an outage: the upstream's
retries in flight stay within a share of its calls in flight (Envoy's retry budget).
"""

from __future__ import annotations

import random
from typing import Any, Literal

import attrs

from claykiln.actors.errors import Refusal, TimeoutRefusal, UpstreamRefusal

__all__ = [
    "REPEAT_SAFE_METHODS",
    "RETRYABLE_STATUSES",
    "Outcome",
    "RetryBudget",
    "RetryPlan",
    "RetryPolicy",
    "backoff_delay",
    "is_retryable_status",
    "may_retry",
    "plan_retry",
]

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REPEAT_SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# 2**62 * base overflows nothing and is far beyond any sane cap.
MAX_EXPONENT = 62

StopReason = Literal[
    "success",
    "attempts_exhausted",
    "not_retryable",
    "not_repeat_safe",
    "deadline",
]


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        msg = f"retry.{attribute.name} must be > 0, got {value!r}"
        raise ValueError(msg)


def _at_least_one(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        msg = f"retry.{attribute.name} must be >= 1 (it counts the first try), got {value!r}"
        raise ValueError(msg)


def _fraction(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value <= 1:
        msg = f"retry.{attribute.name} must be in (0, 1], got {value!r}"
        raise ValueError(msg)


def _count(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        msg = f"retry.{attribute.name} must be >= 0, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class RetryPolicy:
    """``attempts`` counts every try, the first included; backoff doubles from ``base`` up to
    ``cap`` seconds. The upstream's retry budget (Envoy's): retries in flight may be at most
    ``budget`` of the calls in flight, but ``min_retries`` are always allowed (``budget = 1``
    turns the budget off: every call may have its retry)."""

    attempts: int = attrs.field(default=3, validator=_at_least_one)
    base: float = attrs.field(default=0.25, validator=_positive)
    cap: float = attrs.field(default=10.0, validator=_positive)
    budget: float = attrs.field(default=0.2, validator=_fraction)
    min_retries: int = attrs.field(default=3, validator=_count)


class RetryBudget:
    """The retry budget of one upstream: counts its calls and retries in flight.

    Not an actor: the pipeline's tasks change it between awaits only (one trio thread). A call
    is in flight from entering the pipeline to its answer; a retry from the moment it is granted
    (its backoff included) until its attempt ends. ``try_retry`` grants one while
    ``retries < max(min_retries, budget * calls)``.
    """

    __slots__ = ("calls", "refused", "retries")

    def __init__(self) -> None:
        self.calls = 0
        self.retries = 0
        self.refused = 0  # retries the budget refused, for status

    def try_retry(self, policy: RetryPolicy) -> bool:
        """Take a retry slot if the budget has one; False (counted in ``refused``) if not."""
        if self.retries < max(policy.min_retries, policy.budget * self.calls):
            self.retries += 1
            return True
        self.refused += 1
        return False


@attrs.frozen
class Outcome:
    """What one attempt produced: an HTTP ``status``, or a transport ``error`` kind.

    ``sent`` says whether the request may have reached the upstream (False only when it provably
    did not, e.g. a connect failure); ``retryable`` is the executor's verdict on a transport error
    (ignored for statuses); ``retry_after`` is the upstream's Retry-After in seconds, if any.
    """

    status: int | None = None
    error: str | None = None
    sent: bool = True
    retryable: bool = False
    retry_after: float | None = None

    @classmethod
    def from_status(cls, status: int, *, retry_after: float | None = None) -> Outcome:
        """An attempt that got an HTTP response.

        A 429 means the upstream refused the request without processing it (Clay: "rejected
        records are dropped"), so it counts as not sent: even a POST may be tried again.
        """
        return cls(status=status, retry_after=retry_after, sent=status != 429)

    @classmethod
    def from_error(cls, error: Refusal) -> Outcome:
        """An attempt that failed in transport, read from the executor's error details.

        A ``TimeoutRefusal`` is retryable and counted as sent (the request may have arrived);
        an ``UpstreamRefusal`` carries ``kind``, ``sent`` and ``retryable`` in its details;
        any other error is not retryable.
        """
        details = error.details or {}
        if isinstance(error, TimeoutRefusal):
            kind = "timeout"
            default_retryable = True
        elif isinstance(error, UpstreamRefusal):
            kind = str(details.get("kind", "upstream"))
            default_retryable = False
        else:
            kind = error.code
            default_retryable = False
        return cls(
            error=kind,
            sent=bool(details.get("sent", True)),
            retryable=bool(details.get("retryable", default_retryable)),
            retry_after=error.retry_after,
        )


@attrs.frozen
class RetryPlan:
    """The decision after an attempt: ``retry`` after ``delay`` seconds, or stop for ``reason``."""

    retry: bool
    delay: float = 0.0
    reason: StopReason | None = None

    @classmethod
    def stop(cls, reason: StopReason) -> RetryPlan:
        return cls(retry=False, reason=reason)

    @classmethod
    def after(cls, delay: float) -> RetryPlan:
        return cls(retry=True, delay=delay)


def backoff_delay(
    policy: RetryPolicy, attempt: int, *, rng: random.Random, retry_after: float | None
) -> float:
    """Seconds to wait after failed try number ``attempt`` (1 = the first try) before the next.

    Full jitter: ``rng.uniform(0, min(cap, base * 2**(attempt-1)))``. When the upstream sent
    Retry-After the result is at least that (negative values count as 0), even above ``cap``.
    Raises ValueError for ``attempt < 1``.
    """
    if attempt < 1:
        msg = f"attempt counts from 1 (the first try), got {attempt}"
        raise ValueError(msg)
    ceiling = min(policy.cap, policy.base * 2.0 ** min(attempt - 1, MAX_EXPONENT))
    delay = rng.uniform(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after, 0.0)
    return delay


def is_retryable_status(status: int) -> bool:
    """True for 408, 429, 500, 502, 503, 504; every other status (all other 4xx) is final."""
    return status in RETRYABLE_STATUSES


def may_retry(*, method: str, repeat_safe: bool, sent: bool) -> bool:
    """Whether repeating this request is safe: never-sent requests and repeat-safe methods are;
    POST and PATCH only when the operation declares ``repeat_safe``."""
    if not sent or repeat_safe:
        return True
    return method.upper() in REPEAT_SAFE_METHODS


def plan_retry(
    policy: RetryPolicy,
    *,
    attempt: int,
    outcome: Outcome,
    method: str,
    repeat_safe: bool,
    now: float,
    deadline: float | None,
    rng: random.Random,
) -> RetryPlan:
    """Decide what follows try number ``attempt`` (1-based) that produced ``outcome``.

    ``now`` and ``deadline`` are on the same clock (trio time); ``deadline=None`` means none.
    A planned retry always satisfies ``now + delay < deadline``.
    """
    if outcome.status is not None:
        if not is_retryable_status(outcome.status):
            return RetryPlan.stop("success" if outcome.status < 400 else "not_retryable")
    elif not outcome.retryable:
        return RetryPlan.stop("not_retryable")
    if attempt >= policy.attempts:
        return RetryPlan.stop("attempts_exhausted")
    if not may_retry(method=method, repeat_safe=repeat_safe, sent=outcome.sent):
        return RetryPlan.stop("not_repeat_safe")
    delay = backoff_delay(policy, attempt, rng=rng, retry_after=outcome.retry_after)
    if deadline is not None and now + delay >= deadline:
        return RetryPlan.stop("deadline")
    return RetryPlan.after(delay)
