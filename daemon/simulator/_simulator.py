"""The simulator's state and Clay's behavior, as synchronous handlers that return a ``Reply``.

``Simulator`` is the one mutable object: webhooks and their rows, routine runs, the two token
buckets, the fault plan with its seeded RNG, and exact counters. The HTTP layer (``_app``)
reads requests and writes replies; every decision about what Clay answers is made here with no
I/O, so it runs the same under a real socket and in a plain unit test. Time comes from
``clock`` (``trio.current_time`` by default, so trio's MockClock works; tests with a real
socket server inject a manual clock instead).

Webhook checks, in order: unknown id 404 (only with ``auto_create_webhooks=False``), body over
``max_body_bytes`` 413, workspace token bucket 429 (``Retry-After: 1``, Clay's documented body),
``x-clay-webhook-auth`` 401, Content-Type 400, JSON 400, lifetime cap 403, else the row is
stored and 200 ``{"status": "ok"}``. Every request that passes the size check takes a token.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from claykiln.daemon.simulator._model import (
    Faults,
    Row,
    SimSettings,
    SimStats,
    TokenBucket,
    WebhookConfig,
)
from claykiln.daemon.simulator._reply import PUBLIC_PREFIX, Reply, json_reply

__all__ = ["Simulator", "WebhookState"]

MAX_RUNS_KEPT = 100_000

_OK = Reply(200, b'{"status":"ok"}')
_RETRY_AFTER_1 = ((b"retry-after", b"1"),)


@attrs.define
class WebhookState:
    """One webhook: its config, the exact number of rows stored, and the newest row bodies."""

    config: WebhookConfig
    rows: deque[Row]
    stored: int = 0


@attrs.define
class RoutineRun:
    """A routine run started through the public API, and how often it was polled."""

    routine_id: str
    run_id: str
    input: Any
    polls: int = 0


def _rng_for(faults: Faults) -> random.Random:
    return random.Random(faults.seed)  # reproducible fault draws, not security


@attrs.define(eq=False)
class Simulator:
    """Simulated Clay: mutable, owned by the trio thread that serves it.

    Settings and faults may be changed at any time (``update_settings``, ``set_faults``);
    ``reset`` forgets rows, runs, counters and faults but keeps settings and webhook configs.
    """

    settings: SimSettings = attrs.field(factory=SimSettings)
    clock: Callable[[], float] = trio.current_time
    stats: SimStats = attrs.field(init=False, factory=SimStats)
    _webhooks: dict[str, WebhookState] = attrs.field(init=False, factory=dict)
    _runs: dict[str, RoutineRun] = attrs.field(init=False, factory=dict)
    _run_seq: int = attrs.field(init=False, default=0)
    _faults: Faults = attrs.field(init=False, factory=Faults)
    _rng: random.Random = attrs.field(init=False, factory=lambda: _rng_for(Faults()))
    _burst_left: int = attrs.field(init=False, default=0)
    _webhook_bucket: TokenBucket = attrs.field(init=False)
    _public_bucket: TokenBucket = attrs.field(init=False)
    _changed: trio.Event | None = attrs.field(init=False, default=None)
    _plan_changed: trio.Event | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._new_buckets()

    def _new_buckets(self) -> None:
        s = self.settings
        self._webhook_bucket = TokenBucket(s.webhook_rate, s.webhook_burst)
        self._public_bucket = TokenBucket(s.public_rate, s.public_burst)

    # -- configuration -------------------------------------------------------------------

    def update_settings(self, settings: SimSettings) -> None:
        """Replace the settings; both token buckets restart full at the new rate and burst."""
        self.settings = settings
        self._new_buckets()
        self.notify()

    def configure_webhook(
        self, webhook_id: str, *, token: str | None = None, cap: int | None = None
    ) -> None:
        """Create or reconfigure a webhook (its rows and counts are kept)."""
        config = WebhookConfig(token=token, cap=cap)
        state = self._webhooks.get(webhook_id)
        if state is None:
            self._webhooks[webhook_id] = WebhookState(config, deque(maxlen=self.settings.rows_kept))
        else:
            state.config = config

    @property
    def faults(self) -> Faults:
        """The fault plan in force."""
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the whole plan: reseeds the RNG, restarts the burst countdown, releases
        every hang (a released request is then handled under the new plan)."""
        self._faults = faults
        self._rng = _rng_for(faults)
        self._burst_left = faults.burst
        event, self._plan_changed = self._plan_changed, None
        if event is not None:
            event.set()
        self.notify()

    def clear_faults(self) -> None:
        """Back to the no-fault plan."""
        self.set_faults(Faults())

    def reset(self) -> None:
        """Forget rows, row counts, runs, counters and faults; refill the buckets."""
        for state in self._webhooks.values():
            state.rows.clear()
            state.stored = 0
        self._runs.clear()
        in_flight, hanging, delayed = (
            self.stats.in_flight,
            self.stats.hanging,
            self.stats.delayed,
        )
        self.stats = SimStats(in_flight=in_flight, hanging=hanging, delayed=delayed)
        self._new_buckets()
        self.clear_faults()

    # -- inspection ----------------------------------------------------------------------

    def row_count(self, webhook_id: str) -> int:
        """Rows ever stored by this webhook since the last reset (exact; 0 if unknown)."""
        state = self._webhooks.get(webhook_id)
        return 0 if state is None else state.stored

    def rows(self, webhook_id: str) -> list[Row]:
        """The newest rows kept for this webhook, oldest first (at most ``rows_kept``)."""
        state = self._webhooks.get(webhook_id)
        return [] if state is None else list(state.rows)

    def webhook_ids(self) -> list[str]:
        """Every webhook known (configured or auto-created)."""
        return list(self._webhooks)

    def snapshot(self) -> dict[str, Any]:
        """Counters, per-webhook row counts and the fault plan, as JSON (``GET /_sim/stats``)."""
        out = self.stats.to_json()
        out["webhooks"] = {
            wid: {
                "stored": st.stored,
                "kept": len(st.rows),
                "cap": self._cap(st),
                "token_required": st.config.token is not None,
            }
            for wid, st in self._webhooks.items()
        }
        out["faults"] = self._faults.to_json()
        out["burst_remaining"] = self._burst_left
        return out

    async def wait_until(self, predicate: Callable[[Simulator], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checking after every counted change.

        Cancellation: safe; wrap it in ``trio.fail_after`` in tests.
        """
        while not predicate(self):
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def notify(self) -> None:
        """Wake ``wait_until`` callers (called after every counter change)."""
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    async def wait_plan_change(self) -> None:
        """Return at the next ``set_faults`` / ``clear_faults`` / ``reset``."""
        if self._plan_changed is None:
            self._plan_changed = trio.Event()
        await self._plan_changed.wait()

    # -- fault draws (called by the HTTP layer, in the documented order) ---------------------

    def faults_apply(self, path: str) -> bool:
        """Whether the plan covers this (non-control) path."""
        faults = self._faults
        return faults.active and path.startswith(faults.path_prefix)

    def draw_error(self) -> int | None:
        """The injected error status for this request, if any (burst first, then error_rate)."""
        faults = self._faults
        if self._burst_left > 0:
            self._burst_left -= 1
            return faults.error_status
        if faults.error_rate > 0.0 and self._rng.random() < faults.error_rate:
            return faults.error_status
        return None

    def draw_reset(self, stage: str) -> bool:
        """Whether to abort the connection at ``stage`` ("before_store" / "after_store")."""
        faults = self._faults
        if faults.reset != stage:
            return False
        return faults.reset_rate >= 1.0 or self._rng.random() < faults.reset_rate

    # -- Clay: table webhooks ----------------------------------------------------------------

    def _cap(self, state: WebhookState) -> int:
        cap = state.config.cap
        return self.settings.record_cap if cap is None else cap

    def handle_webhook(
        self, webhook_id: str, headers: Mapping[str, str], body: bytes, too_large: bool
    ) -> Reply:
        """What Clay answers a ``POST /v3/sources/webhook/{webhook_id}`` (see module doc)."""
        state = self._webhooks.get(webhook_id)
        if state is None:
            if not self.settings.auto_create_webhooks:
                return json_reply(404, {"message": f"Webhook {webhook_id} not found"})
            state = WebhookState(WebhookConfig(), deque(maxlen=self.settings.rows_kept))
            self._webhooks[webhook_id] = state
        if too_large:
            limit = self.settings.max_body_bytes
            return json_reply(413, {"message": f"Request body exceeds {limit} bytes"})
        if not self._webhook_bucket.try_take(self.clock()):
            return self._webhook_rate_limited()
        token = state.config.token
        if token is not None and headers.get("x-clay-webhook-auth") != token:
            return json_reply(401, {"message": "Invalid or missing x-clay-webhook-auth token"})
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            return json_reply(400, {"message": "Content-Type must be application/json"})
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return json_reply(400, {"message": "Request body must be valid JSON"})
        if state.stored >= self._cap(state):
            return json_reply(403, {"message": "Record limit reached for webhook"})
        state.stored += 1
        recorded = {
            name: headers[name] for name in self.settings.recorded_headers if name in headers
        }
        state.rows.append(Row(state.stored, payload, recorded, self.clock()))
        return _OK

    def _webhook_rate_limited(self) -> Reply:
        s = self.settings
        wait = self._webhook_bucket.wait_time(self.clock())
        payload = {
            "type": "TooManyRequests",
            "message": (
                f"Rate limit exceeded: {s.webhook_rate:g} requests per second per workspace "
                f"(burst {s.webhook_burst})"
            ),
            "details": {
                "limit_per_second": s.webhook_rate,
                "burst": s.webhook_burst,
                "retry_after_seconds": round(wait, 3),
            },
        }
        return json_reply(429, payload, _RETRY_AFTER_1)

    # -- Clay: public API --------------------------------------------------------------------

    def handle_public(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """What Clay answers under ``/public/v0``: auth, then the rate limit, then the route."""
        if headers.get("clay-api-key") != self.settings.api_key:
            return json_reply(401, {"message": "Invalid or missing API key (clay-api-key)"})
        now = self.clock()
        if not self._public_bucket.try_take(now):
            wait = self._public_bucket.wait_time(now)
            extra = (
                (b"retry-after", str(max(1, int(-(-wait // 1)))).encode()),
                (b"x-ratelimit-limit", str(self.settings.public_burst).encode()),
                (b"x-ratelimit-remaining", b"0"),
            )
            return json_reply(429, {"message": "Too many requests"}, extra)
        parts = path[len(PUBLIC_PREFIX) :].strip("/").split("/")
        if parts == ["me"]:
            if method != "GET":
                return json_reply(405, {"message": "Method not allowed"})
            return json_reply(200, _ME)
        if len(parts) == 3 and parts[0] == "routines" and parts[2] == "runs":
            if method != "POST":
                return json_reply(405, {"message": "Method not allowed"})
            return self._start_run(parts[1], body)
        if len(parts) == 4 and parts[0] == "routines" and parts[2] == "runs":
            if method != "GET":
                return json_reply(405, {"message": "Method not allowed"})
            return self._poll_run(parts[1], parts[3])
        return json_reply(404, {"message": f"Not found: {path}"})

    def _start_run(self, routine_id: str, body: bytes) -> Reply:
        try:
            run_input = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            return json_reply(400, {"message": "Request body must be valid JSON"})
        self._run_seq += 1
        run_id = f"run_{self._run_seq:08d}"
        self._runs[run_id] = RoutineRun(routine_id, run_id, run_input)
        if len(self._runs) > MAX_RUNS_KEPT:
            del self._runs[next(iter(self._runs))]
        self.stats.routine_runs_started += 1
        return json_reply(202, {"run_id": run_id, "routine_id": routine_id, "status": "running"})

    def _poll_run(self, routine_id: str, run_id: str) -> Reply:
        run = self._runs.get(run_id)
        if run is None or run.routine_id != routine_id:
            return json_reply(404, {"message": f"Run {run_id} not found"})
        run.polls += 1
        if run.polls <= self.settings.poll_running_count:
            return json_reply(202, {"run_id": run_id, "status": "running"})
        if run.polls == self.settings.poll_running_count + 1:
            self.stats.routine_runs_completed += 1
        result = {"routine_id": routine_id, "input": run.input, "output": {"ok": True}}
        return json_reply(200, {"run_id": run_id, "status": "completed", "result": result})


_ME = {
    "workspace": {"id": 1001, "name": "Simulated Workspace"},
    "user": {"id": 2002, "email": "sim@example.com", "name": "Clay Simulator"},
}
