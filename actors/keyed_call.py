"""The call coordinator: idempotency keys and fallback answers around the call pipeline.

Card
- owns: the per-operation guards (``CallGuard``: idempotency mode, retention, key field, cache
  policy, fallback); it is a coordinator, not an actor: ``precheck`` runs on the connection
  reader, ``call`` in the request's task.
- calls: the idempotency store (``claim`` on the reader, ``release`` at the end: plain calls,
  no ask; the intent and outcome writes go through the storage writer from the caller's task),
  the pipeline (``fail_fast``, ``call``); tells: the fallback cache (``remember``).
- ``precheck(request)`` (no await, no task): validates the headers and the key (``required``
  without one is ``bad_request``), derives it, stamps the ``key_field``, and answers at once
  what needs no upstream: a replay of a completed key (``replayed: true``; a ``PackedAnswer``,
  the stored bytes sent as they are, for a record holding its packed answer), a mismatch, a key
  in doubt, and, for ``on_failure = "fallback"``, a fail-fast refusal answered from the cache.
  Otherwise it claims the key (lead or follow, decided over the record it just read) and
  returns the ``PreparedCall`` the handler runs; a claimed lead is released by ``call``.
- ``call(prepared)``: lead, follow or replay under the key. A leader's intent is durable before
  a byte goes upstream and its outcome before the caller gets it; final answers (2xx, 4xx but
  408/409/425/429) are stored; failures are forgotten (a retry runs again) unless the request
  may have reached the upstream unanswered on an operation not safe to repeat: then the key is
  left in doubt. A follower waits for the leader's answer within its own deadline
  (``coalesced: true``), then gets ``idempotency_in_flight``.
- on failure of the upstream (``FALLBACK_CODES``) with ``on_failure = "fallback"``: the last
  good answer with ``fallback: true``, its ``staleness``, ``age`` and ``error``; none, or one
  past ``max_age``: the original error.
- on cancellation (the caller went away): a leader's key is forgotten when the operation is
  safe to repeat, else left in doubt (the request may be on its way); its followers get
  ``idempotency_in_flight`` with ``retry_after: 0`` or the in-doubt refusal. The writes are
  shielded and bounded by ``CLEANUP_TIMEOUT``.

A leader's life (intent, outcome, failure, cancellation) is in actors/keyed_call_lead.py; the
guard, the prepared call and the shared checks in actors/keyed_call_types.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import attrs
import trio

from claykiln.actors.call import CallRequest
from claykiln.actors.errors import BadRequestRefusal, IdempotencyInFlightRefusal, Refusal
from claykiln.actors.fallback import FallbackCache
from claykiln.actors.fallback_policy import cache_key, fallback_result, falls_back, staleness
from claykiln.actors.idempotency import IdempotencyStore
from claykiln.actors.idempotency_flights import Follow, Replay, Started
from claykiln.actors.idempotency_keys import (
    derived_key,
    fingerprint,
    repeatable_in_doubt,
    stamp_key_field,
)
from claykiln.actors.idempotency_record import (
    COMPLETED,
    IdempotencyRecord,
    RecordState,
    in_doubt_refusal,
    mismatch_refusal,
    replay_body,
)
from claykiln.actors.keyed_call_lead import CLEANUP_TIMEOUT, Leader
from claykiln.actors.keyed_call_types import (
    NO_GUARD,
    CallGuard,
    IdempotencyMode,
    PackedAnswer,
    PreparedCall,
    check_caller_headers,
    replayed,
)
from claykiln.actors.log import get_logger
from claykiln.actors.pipeline import CallPipeline
from claykiln.actors.upstream import render_path

__all__ = [
    "CLEANUP_TIMEOUT",
    "CallGuard",
    "IdempotencyMode",
    "KeyedCalls",
    "PackedAnswer",
    "PreparedCall",
]

_IN_DOUBT: Final = RecordState.IN_DOUBT.value

log = get_logger("claykiln.pipeline")


class KeyedCalls:
    """``call`` with idempotency and fallback; see the module card."""

    def __init__(
        self,
        pipeline: CallPipeline,
        idempotency: IdempotencyStore,
        cache: FallbackCache,
        guards: Mapping[str, CallGuard],
    ) -> None:
        self.pipeline = pipeline
        self.idempotency = idempotency
        self.cache = cache
        self.guards = dict(guards)
        self._leader = Leader(pipeline, idempotency, self._remember, self._fallback_for)

    def reconfigure(self, guards: Mapping[str, CallGuard]) -> None:
        """SIGHUP: new guards; calls in flight keep what they had."""
        self.guards = dict(guards)

    # -- on the connection reader ------------------------------------------------------------
    def precheck(self, request: CallRequest) -> PreparedCall | PackedAnswer | dict[str, Any]:
        """A ready answer (a replay, packed or not; a fallback) or the ``PreparedCall`` to run;
        raises the refusals that need no upstream (see the module card)."""
        op = self.pipeline.operation(request.operation)
        check_caller_headers(op, request.headers)
        guard = self.guards.get(op.name, NO_GUARD)
        fp = None
        if guard.idempotency != "off" or guard.cache is not None:
            fp = fingerprint(
                op.name, request.path_params, request.query, request.json, request.body
            )
        key = request.idempotency_key
        if key is None and guard.idempotency == "required":
            msg = (
                f"call: operation {op.name!r} requires an idempotency_key (running it twice "
                "could do it twice); send a key that names this request, e.g. a UUID you keep"
            )
            raise BadRequestRefusal(msg)
        if key is None and guard.idempotency == "derive":
            assert fp is not None
            key = derived_key(fp)
        repeatable = repeatable_in_doubt(repeat_safe=op.repeat_safe, key_field=guard.key_field)
        recorded = key if guard.idempotency != "off" else None
        stored = None
        if recorded is not None:
            assert fp is not None
            stored = self.idempotency.stored_value(recorded)
            replay = self._stored_answer(recorded, fp, repeatable, stored)
            if replay is not None:
                return replay
        if key is not None and guard.key_field is not None:
            stamped = stamp_key_field(request.json, guard.key_field, key, operation=op.name)
            request = attrs.evolve(request, json=stamped, idempotency_key=key)
        elif key is not request.idempotency_key:
            request = attrs.evolve(request, idempotency_key=key)
        ckey = None
        if guard.cache is not None:
            assert fp is not None
            ckey = cache_key(
                op.name,
                guard.cache,
                fingerprint=fp,
                path_params=request.path_params,
                query=request.query,
            )
        try:
            self.pipeline.fail_fast(request)
        except Refusal as exc:
            answer = self._fallback(op.name, guard, ckey, exc)
            if answer is None:
                raise
            return answer
        sent: dict[str, Any] = {}
        started: Started | None = None
        if recorded is not None:
            assert fp is not None
            # What the key's record says was sent (the path also checks the path parameters).
            sent = {"method": op.method, "path": render_path(op.path, request.path_params)}
            if guard.key_field is not None:
                sent["key_field"] = guard.key_field
            # Last: a lead claimed here is released by ``call``, which the handler always runs.
            started = self.idempotency.claim(
                recorded, fp, repeatable=repeatable, deadline=request.deadline, stored=stored
            )
            if isinstance(started, Replay):
                return replayed(started.record)
        return PreparedCall(request, op, guard, recorded, fp, repeatable, ckey, sent, started)

    def _stored_answer(
        self, key: str, fp: str, repeatable: bool, value: Any
    ) -> PackedAnswer | dict[str, Any] | None:
        """The replay of the completed key whose stored map is ``value``; raises a mismatch or
        an in-doubt refusal; None when the call must go on (no record, expired, in doubt but
        repeatable, or a malformed record, which ``claim`` reports). Reads the map itself,
        without building the record, and answers with the stored bytes: this is the replay's
        hot path, on the connection reader."""
        if not isinstance(value, dict):
            return None
        stored_fp, state, expires = value.get("fp"), value.get("state"), value.get("expires")
        if not isinstance(expires, int | float) or self.idempotency.now() >= expires:
            return None
        try:
            if stored_fp != fp:
                raise mismatch_refusal(key, str(stored_fp), fp)
            if state == _IN_DOUBT and not repeatable:
                record = IdempotencyRecord.from_value(key, value)
                if record is not None:
                    raise in_doubt_refusal(record)
        except Refusal as exc:
            self.idempotency.note_refusal(exc)
            raise
        if state != COMPLETED:
            return None
        body = replay_body(value)
        if body is not None:
            self.idempotency.precheck_replays += 1
            return PackedAnswer(body)
        result = value.get("result")  # the layout before packed answers (or a damaged one)
        if "answer" in value or not isinstance(result, dict):
            return None
        self.idempotency.precheck_replays += 1
        out = dict(result)
        out["replayed"] = True
        out["idempotency_key"] = key
        return out

    def _fallback(
        self, operation: str, guard: CallGuard, key: str | None, error: Refusal
    ) -> dict[str, Any] | None:
        """The cached answer (kept under ``key``) standing in for ``error``, or None (no
        fallback, nothing kept, or too old)."""
        policy = guard.cache
        if not guard.fallback or policy is None or key is None or not falls_back(error):
            return None
        kept = self.cache.lookup(key)
        if kept is None:
            return None
        age = kept.age(self.cache.now())
        label = staleness(age, policy)
        if label is None:
            return None
        self.cache.served += 1
        log.info(
            "call.fallback",
            operation=operation,
            staleness=label.value,
            age=round(age, 3),
            error=error.code,
        )
        return fallback_result(kept.result, label, age, error)

    # -- in the request's task ---------------------------------------------------------------
    async def call(self, prepared: PreparedCall) -> dict[str, Any]:
        """Run a prepared call (see the module card); raises what the call ends with."""
        if prepared.key is None:
            return await self._run(prepared)
        assert prepared.fingerprint is not None
        started = prepared.started
        if started is None:
            started = await self.idempotency.begin(
                prepared.key,
                prepared.fingerprint,
                repeatable=prepared.repeatable,
                deadline=prepared.request.deadline,
            )
        if isinstance(started, Replay):
            return replayed(started.record)
        if isinstance(started, Follow):
            return await self._follow(prepared, started)
        return await self._leader.run(prepared, started)

    async def _follow(self, prepared: PreparedCall, follow: Follow) -> dict[str, Any]:
        deadline = prepared.request.deadline
        with trio.move_on_at(math.inf if deadline is None else deadline):
            answer = await follow.answer.wait()
            out = dict(answer)
            out["coalesced"] = True
            return out
        follow.answer.fail(IdempotencyInFlightRefusal("the follower gave up"))
        now = trio.current_time()
        ends = follow.leader_deadline
        retry_after = max(0.0, ends - now) if ends is not None else 1.0
        msg = (
            f"a call with idempotency key {prepared.key!r} is still running and did not end "
            "within this call's deadline; retry with the same key to get its answer"
        )
        raise IdempotencyInFlightRefusal(
            msg, retry_after=retry_after, details={"key": prepared.key}
        )

    # -- without a key -----------------------------------------------------------------------
    async def _run(self, prepared: PreparedCall) -> dict[str, Any]:
        try:
            result = await self.pipeline.call(prepared.request)
        except Refusal as exc:
            answer = self._fallback(
                prepared.operation.name, prepared.guard, prepared.cache_key, exc
            )
            if answer is None:
                raise
            return answer
        wire = result.to_wire()
        self._remember(prepared, result.status, wire)
        return wire

    def _fallback_for(self, prepared: PreparedCall, error: Refusal) -> dict[str, Any] | None:
        return self._fallback(prepared.operation.name, prepared.guard, prepared.cache_key, error)

    def _remember(self, prepared: PreparedCall, status: int, wire: Mapping[str, Any]) -> None:
        if prepared.cache_key is not None and 200 <= status < 300:
            self.cache.remember(prepared.cache_key, wire)
