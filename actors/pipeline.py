"""The call path: one request walks lane -> breaker -> gate -> upstream, with retries.

Card:
- owns: nothing but the routing tables (operations, upstream routes); it is a coordinator, not
  an actor, and runs in the caller's task (a timeout or a vanished caller cancels it cleanly).
- asks: lanes (a slot), breaker board (a ticket), gate (a token under ``Operation.gate``), the
  upstream pool (the HTTP exchange); tells: breaker outcomes and gate closures, fire-and-forget.
- replies: a ``CallResult`` for every final upstream answer below 500 (the app sees Clay's own
  status and body; 408 and 429 are retried or gated first); raises a ``Refusal`` for 5xx left
  after the retries (``upstream_error``), timeouts (``timeout`` with the stage), connection
  failures (``upstream_error`` with kind), and the fast refusals ``breaker_open`` / ``lane_full``
  / ``rate_limited`` carrying ``retry_after``.
- on cancellation: the lane slot is released, an outstanding breaker ticket is recorded as
  IGNORED (a probe slot is never leaked), the HTTP connection is closed by the pool.

Health: ``probe(operation, deadline)`` is the health monitor's active probe (one attempt through
the gate and the upstream, no lane, no breaker, no retry), and ``auth_watch`` (set by the daemon)
hears every 401/403, and the next answer of an operation whose credential was refused
(``AuthWatch.suspects``), fire-and-forget.

HTTP-aware outcomes for the breaker: 5xx, 408, class timeouts and connection errors are FAILURE;
a timeout cut short by the caller's own deadline (or spent waiting for a free connection) is
IGNORED (one app's tight deadline must not open the breaker every app shares); 429 goes to the
gate (IGNORED for health); 401/403 raise a credentials alert when a credential was sent (none is
when its file is missing) and count as SUCCESS (the upstream is up; our key is wrong); other
4xx are the caller's fault: SUCCESS.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Final

import attrs
import trio

from claykiln.actors.breaker import BreakerBoard
from claykiln.actors.breaker_types import FAILURES, Outcome, Ticket
from claykiln.actors.call import (
    CallRequest,
    CallResult,
    Operation,
    check_headers,
    decode_body,
    error_outcome,
    excerpt,
    health_outcome,
)
from claykiln.actors.errors import (
    BadRequestRefusal,
    Refusal,
    TimeoutRefusal,
    UnknownOperationRefusal,
    UpstreamRefusal,
)
from claykiln.actors.figures import ExchangeFigures, status_label
from claykiln.actors.gate import GateBoard
from claykiln.actors.health_inputs import AuthWatch, ProbeResult
from claykiln.actors.lanes import Lanes
from claykiln.actors.log import alert, get_logger
from claykiln.actors.mailbox import ActorStopped
from claykiln.actors.retry import Outcome as RetryOutcome
from claykiln.actors.retry import RetryBudget, RetryPolicy, plan_retry
from claykiln.actors.upstream import HttpRequest, HttpResponse, UpstreamPool, render_path

__all__ = [
    "AuthWatch",
    "CallPipeline",
    "CallRequest",
    "CallResult",
    "Operation",
    "ProbeResult",
    "UpstreamRoute",
]

log = get_logger("claykiln.pipeline")

DEFAULT_GATE_CLOSURE: Final = 1.0  # a 429 without Retry-After closes the gate this long


@attrs.frozen
class UpstreamRoute:
    pool: UpstreamPool
    retry: RetryPolicy


class CallPipeline:
    """Runs ``call`` requests through lanes, breaker, gate and upstream with retries."""

    def __init__(
        self,
        operations: Mapping[str, Operation],
        routes: Mapping[str, UpstreamRoute],
        *,
        lanes: Lanes,
        breakers: BreakerBoard,
        gate: GateBoard,
        rng: random.Random | None = None,
    ) -> None:
        self.operations = dict(operations)
        self.routes = dict(routes)
        self.lanes = lanes
        self.breakers = breakers
        self.gate = gate
        self.rng = rng or random.Random()
        self.budgets: dict[str, RetryBudget] = {}  # upstream -> its retry budget
        self.exchanges = ExchangeFigures()  # every HTTP exchange, for kiln top and metrics
        self.auth_watch: AuthWatch | None = None  # the health monitor, set by the daemon

    def reconfigure(
        self, operations: Mapping[str, Operation], routes: Mapping[str, UpstreamRoute]
    ) -> None:
        """SIGHUP: new operations and retry policies; calls in flight keep what they had."""
        self.operations = dict(operations)
        self.routes = dict(routes)

    def operation(self, name: str) -> Operation:
        op = self.operations.get(name)
        if op is None:
            known = ", ".join(sorted(self.operations)) or "(none)"
            msg = f"unknown operation {name!r}; configured operations: {known}"
            raise UnknownOperationRefusal(msg)
        return op

    def fail_fast(self, request: CallRequest) -> None:
        """Refuse at once from published snapshots (no task, no ask): breaker open, gate closed
        past the deadline, lane full. Also validates the request's headers, and answers
        ``timeout`` to a deadline already past (not a gate's refusal)."""
        check_headers(request.headers)
        op = self.operation(request.operation)
        if request.deadline is not None and request.deadline <= trio.current_time():
            msg = f"call: the deadline of {op.name} passed before the call could start"
            raise TimeoutRefusal(msg, details={"stage": "deadline", "sent": False})
        self.breakers.check(op.breaker_key)
        self.gate.check(op.gate, request.deadline)
        self.lanes.check(request.lane or op.lane)

    def _http_request(self, op: Operation, request: CallRequest) -> HttpRequest:
        check_headers(request.headers)
        headers = dict(op.headers)
        for name, value in request.headers.items():
            if op.auth_header and name.lower() == op.auth_header.lower():
                msg = f"header {name!r} is the operation's credential; the daemon sets it"
                raise BadRequestRefusal(msg)
            headers[name] = value
        if op.auth_header and op.credential:
            headers[op.auth_header] = op.credential
        if request.idempotency_key and op.idempotent:
            headers["Idempotency-Key"] = request.idempotency_key
        return HttpRequest(
            method=op.method,
            path=render_path(op.path, request.path_params),
            query=request.query,
            headers=headers,
            json=request.json,
            content=request.body,
        )

    async def probe(self, operation: str, deadline: float | None) -> ProbeResult:
        """One attempt of ``operation`` (no parameters) through its gate (a token of its rate
        budget) and its upstream, without lane, breaker or retry: the health monitor's active
        probe. What the answer teaches is learned as for a call (a 429 closes the gate, the
        auth watch hears a 401/403), without the per-call credentials alert. Never raises a
        refusal: what could not be learned is ``reached=None``."""
        try:
            op = self.operation(operation)
            route = self.routes.get(op.upstream)
            if route is None:
                return ProbeResult(None, error=f"upstream {op.upstream} is not configured")
            http = self._http_request(op, CallRequest(operation=op.name))
            await self.gate.acquire(op.gate, deadline)
            response = await route.pool.execute(http, timeout=op.timeout, stage_deadline=deadline)
        except (TimeoutRefusal, UpstreamRefusal) as exc:
            if _transport_outcome(exc) is Outcome.IGNORED:
                return ProbeResult(None, error=exc.message)
            return ProbeResult(False, error=exc.message)
        except Refusal as exc:
            return ProbeResult(None, error=exc.message)
        except ActorStopped as exc:
            return ProbeResult(None, error=str(exc))
        self._learn(op, response, alerting=False)
        return ProbeResult(True, status=response.status)

    async def call(self, request: CallRequest) -> CallResult:
        op = self.operation(request.operation)
        route = self.routes.get(op.upstream)
        if route is None:
            msg = f"operation {op.name!r} names upstream {op.upstream!r}, which is not configured"
            raise UnknownOperationRefusal(msg)
        http = self._http_request(op, request)
        started = trio.current_time()
        async with self.lanes.slot(request.lane or op.lane, request.deadline):
            return await self._attempts(op, route, http, request.deadline, started)

    async def _attempts(
        self,
        op: Operation,
        route: UpstreamRoute,
        http: HttpRequest,
        deadline: float | None,
        started: float,
    ) -> CallResult:
        budget = self.budgets.setdefault(op.upstream, RetryBudget())
        budget.calls += 1
        retry_held = False  # a retry slot of the budget, from its grant to its attempt's end
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    response, error = await self._one_attempt(op, route, http, deadline)
                finally:
                    if retry_held:
                        budget.retries -= 1
                        retry_held = False
                now = trio.current_time()
                if response is not None:
                    outcome = RetryOutcome.from_status(
                        response.status, retry_after=response.retry_after()
                    )
                else:
                    assert error is not None
                    outcome = RetryOutcome.from_error(error)
                plan = plan_retry(
                    route.retry,
                    attempt=attempt,
                    outcome=outcome,
                    method=op.method,
                    repeat_safe=op.repeat_safe,
                    now=now,
                    deadline=deadline,
                    rng=self.rng,
                )
                if not plan.retry or not budget.try_retry(route.retry):
                    return self._final(op, response, error, attempt, now - started)
                retry_held = True
                log.info(
                    "call.retry",
                    operation=op.name,
                    attempt=attempt,
                    delay=round(plan.delay, 3),
                    status=response.status if response is not None else None,
                    error=error.code if error is not None else None,
                )
                await self._backoff(op.breaker_key, plan.delay)
        finally:
            budget.calls -= 1
            if retry_held:
                budget.retries -= 1

    async def _backoff(self, breaker_key: str, delay: float) -> None:
        """Wait ``delay`` before the next attempt, cut short when the breaker opens: the next
        attempt then gets ``breaker_open`` from the snapshot (raised here at once if it is
        already open), so no caller waits out a backoff for an upstream known to be down."""
        opening = self.breakers.opening(breaker_key)
        self.breakers.check(breaker_key)
        with trio.move_on_after(delay):
            await opening.wait()

    def _final(
        self,
        op: Operation,
        response: HttpResponse | None,
        error: Refusal | None,
        attempts: int,
        elapsed: float,
    ) -> CallResult:
        if response is not None and response.status < 500:
            return CallResult(
                status=response.status,
                headers=response.headers,
                body=decode_body(response),
                attempts=attempts,
                duration_ms=elapsed * 1000,
            )
        if response is not None:
            msg = (
                f"{op.upstream} answered {response.status} to {op.name} after {attempts} attempt(s)"
            )
            raise UpstreamRefusal(
                msg,
                details={
                    "status": response.status,
                    "body": excerpt(response.body),
                    "attempts": attempts,
                    "upstream": op.upstream,
                },
            )
        assert error is not None
        details = dict(error.details or {})
        details["attempts"] = attempts
        error.details = details
        raise error

    async def _one_attempt(
        self, op: Operation, route: UpstreamRoute, http: HttpRequest, deadline: float | None
    ) -> tuple[HttpResponse | None, Refusal | None]:
        """One try: breaker ticket (a probe first where the breaker asks for one), gate token,
        HTTP exchange; the outcome is always recorded."""
        ticket: Ticket = await self.breakers.acquire(op.breaker_key)
        while ticket.probe and ticket.probe_operation not in (None, op.name):
            ticket = await self._probe(ticket, deadline)
        report = _Report()
        try:
            return await self._exchange(op, route, http, deadline, report)
        finally:
            self.breakers.record(ticket, report.outcome, trio.current_time() - report.started)

    async def _probe(self, probe: Ticket, deadline: float | None) -> Ticket:
        """Test a half-open breaker with its probe operation, then get the caller's own ticket
        (``settle_probe``): a ticket, another probe of the round, or ``BreakerOpenRefusal``.
        A probe operation that cannot be made here leaves the caller's call as the probe."""
        op = self.operations.get(probe.probe_operation or "")
        route = self.routes.get(op.upstream) if op is not None else None
        if op is None or route is None or "{" in op.path:  # a probe takes no parameters
            return attrs.evolve(probe, probe_operation=None)
        report = _Report()
        settled = False
        try:
            http = self._http_request(op, CallRequest(operation=op.name))
            await self._exchange(op, route, http, deadline, report)
            settled = True
            duration = trio.current_time() - report.started
            return await self.breakers.settle_probe(probe, report.outcome, duration)
        finally:
            if not settled:
                self.breakers.record(probe, report.outcome, trio.current_time() - report.started)

    async def _exchange(
        self,
        op: Operation,
        route: UpstreamRoute,
        http: HttpRequest,
        deadline: float | None,
        report: _Report,
    ) -> tuple[HttpResponse | None, Refusal | None]:
        """Gate token and HTTP exchange; ``report`` learns what it meant for health."""
        report.started = trio.current_time()
        await self.gate.acquire(op.gate, deadline)
        report.started = trio.current_time()
        try:
            response = await route.pool.execute(http, timeout=op.timeout, stage_deadline=deadline)
        except (TimeoutRefusal, UpstreamRefusal) as exc:
            report.outcome = _transport_outcome(exc)
            self.exchanges.record(
                op.upstream,
                _error_label(exc, report.outcome),
                failed=report.outcome in FAILURES,
                seconds=trio.current_time() - report.started,
            )
            return None, exc
        if response.status < 500:
            # Decoded before the outcome is known: a body the daemon cannot carry back is the
            # upstream's failure (upstream_error), never recorded as a success.
            try:
                response = attrs.evolve(response, decoded=decode_body(response))
            except UpstreamRefusal as exc:
                report.outcome = Outcome.FAILURE
                seconds = trio.current_time() - report.started
                label = status_label(response.status)
                self.exchanges.record(op.upstream, label, failed=True, seconds=seconds)
                details = dict(exc.details or {})
                details["upstream"] = op.upstream
                exc.details = details
                return None, exc
        report.outcome = health_outcome(response.status)
        self.exchanges.record(
            op.upstream,
            status_label(response.status),
            failed=report.outcome in FAILURES,
            seconds=trio.current_time() - report.started,
        )
        self._learn(op, response)
        return response, None

    def _learn(self, op: Operation, response: HttpResponse, *, alerting: bool = True) -> None:
        status = response.status
        watch = self.auth_watch
        if status in (429, 503):
            retry_after = response.retry_after()
            if status == 429 or retry_after is not None:
                seconds = retry_after if retry_after is not None else DEFAULT_GATE_CLOSURE
                self.gate.close_until(op.gate, seconds, f"{status} from {op.name}")
        elif status in (401, 403):
            # Nothing was sent with a key when the credential file is missing: the daemon said
            # so at start (upstream.credentials_missing) and the call's result says so.
            if alerting and op.credential is not None:
                alert(
                    log,
                    "upstream.credentials_rejected",
                    severity="critical",
                    upstream=op.upstream,
                    operation=op.name,
                    status=status,
                    body=excerpt(response.body),
                )
            if watch is not None:
                watch.auth_answered(op.name, status)
        elif watch is not None and op.name in watch.suspects:
            watch.auth_answered(op.name, status)


class _Report:
    """What one exchange meant for the breaker (IGNORED until known) and when it started."""

    __slots__ = ("outcome", "started")

    def __init__(self) -> None:
        self.outcome = Outcome.IGNORED
        self.started = trio.current_time()


def _transport_outcome(error: Refusal) -> Outcome:
    """``error_outcome``, with a failure to connect told apart (the request never left)."""
    outcome = error_outcome(error)
    details = error.details or {}
    connect = details.get("kind") == "connect" or (
        isinstance(error, TimeoutRefusal) and details.get("stage") == "connect"
    )
    return Outcome.CONNECT_FAILURE if outcome is Outcome.FAILURE and connect else outcome


def _error_label(error: Refusal, outcome: Outcome) -> str:
    """The outcome label of an exchange that got no response (``ExchangeFigures``)."""
    if outcome is Outcome.CONNECT_FAILURE:
        return "connect_error"
    return "timeout" if isinstance(error, TimeoutRefusal) else "transport_error"
