"""A leader's life under its idempotency key: the part of ``call`` (actors/keyed_call.py) that
runs the call a key was claimed for.

- The intent (state in_flight) is durable before a byte goes upstream; written without a
  scheduler pass to queue it (``save_intent``). A failure to write it refuses the call
  (``storage_full`` / ``internal``) and releases the key.
- A final answer (2xx, 4xx but 408/409/425/429) is stored as the completed record; the commit
  itself releases the key and answers the followers, in the writer's task
  (``IdempotencyStore.save_then``), so a caller that goes away meanwhile changes nothing. Any
  other answer ends the intent (a retry runs again). An outcome that cannot be written leaves
  the intent: the key is in doubt, never run twice.
- A failed call (a ``Refusal``) forgets the key, or leaves it in doubt when the request may have
  reached the upstream unanswered on an operation not safe to repeat; then the fallback answer,
  if any, or the error, for the caller and its followers alike.
- Cancelled (or a bug) mid-call: nobody knows whether the request left; the key is forgotten
  when the operation is safe to repeat, else left in doubt; followers are told. These writes
  are shielded and bounded by ``CLEANUP_TIMEOUT``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

from claykiln.actors.errors import (
    IdempotencyInFlightRefusal,
    InternalRefusal,
    Refusal,
    StorageFullRefusal,
)
from claykiln.actors.idempotency import IdempotencyStore
from claykiln.actors.idempotency_flights import Lead
from claykiln.actors.idempotency_keys import failure_leaves_doubt, is_final_status
from claykiln.actors.idempotency_record import (
    IdempotencyRecord,
    RecordState,
    in_doubt_refusal,
)
from claykiln.actors.keyed_call_types import PreparedCall
from claykiln.actors.log import get_logger
from claykiln.actors.mailbox import Reply
from claykiln.actors.pipeline import CallPipeline
from claykiln.storage import StorageError, StoreFull

__all__ = ["CLEANUP_TIMEOUT", "Leader"]

CLEANUP_TIMEOUT: Final = 5.0

log = get_logger("claykiln.pipeline")

Remember = Callable[[PreparedCall, int, Mapping[str, Any]], None]
"""Keep a good answer for the fallback cache: ``(prepared, status, wire)``."""
Fallback = Callable[[PreparedCall, Refusal], "dict[str, Any] | None"]
"""The cached answer standing in for a failure, or None."""


class Leader:
    """Runs the calls whose key this process leads; see the module docstring."""

    def __init__(
        self,
        pipeline: CallPipeline,
        idempotency: IdempotencyStore,
        remember: Remember,
        fallback: Fallback,
    ) -> None:
        self.pipeline = pipeline
        self.idempotency = idempotency
        self._remember = remember
        self._fallback = fallback

    async def run(self, prepared: PreparedCall, lead: Lead) -> dict[str, Any]:
        """Lead the call under ``prepared.key`` (see the module docstring); raises what the
        call ends with."""
        key = prepared.key
        assert key is not None and prepared.fingerprint is not None
        idem = self.idempotency
        now = idem.now()
        op, request = prepared.operation, prepared.request
        intent = IdempotencyRecord(
            key=key,
            state=RecordState.IN_FLIGHT,
            operation=op.name,
            fingerprint=prepared.fingerprint,
            boot=idem.boot,
            started_at=now,
            expires_at=now + prepared.guard.retention,
            sent=prepared.sent,
        )
        # The record this call replaces (expired, or in doubt and safe to repeat): its expiry
        # entry goes when the outcome is written.
        previous = lead.previous.expires_at if lead.previous is not None else None
        try:
            await idem.save_intent(intent)
        except BaseException as exc:
            error = _storage_refusal(exc)
            idem.release(key, error or _gone())
            if error is not None:
                raise error from exc
            raise
        try:
            result = await self.pipeline.call(request)
        except Refusal as exc:
            return await self._failed(prepared, intent, previous, exc)
        except BaseException as exc:
            await self._aborted(prepared, intent, previous, exc)
            raise
        wire = result.to_wire()
        wire["idempotency_key"] = key
        status = result.status
        if is_final_status(status):
            done = intent.completed(idem.now(), wire)
            saved: Reply[None] = Reply()

            def outcome(error: StorageError | None) -> None:
                # In the writer's task, whatever became of this one: the key is released.
                self._outcome_written(prepared, status, wire, error)
                saved.set(None)

            if idem.save_then(done, outcome, previous_expiry=previous):
                await saved.wait()  # cancelled: the outcome still lands, the key is released
                return wire
        kept = True
        with trio.CancelScope(shield=True):
            try:
                if is_final_status(status):
                    await idem.save(done, previous_expiry=previous)
                else:
                    await idem.end_intent(intent)
                kept = False
            except StorageError as exc:
                log.warning("idempotency.outcome_not_saved", key=key, error=str(exc))
            self._outcome_written(prepared, status, wire, None, kept=kept)
        return wire

    def _outcome_written(
        self,
        prepared: PreparedCall,
        status: int,
        wire: dict[str, Any],
        error: StorageError | None,
        *,
        kept: bool = False,
    ) -> None:
        """The leader's outcome is written (or could not be: ``error``, ``kept``): remember a
        good answer and release the key, its followers getting ``wire``."""
        assert prepared.key is not None
        if error is not None:
            # The upstream acted and the caller gets its answer; the intent stays, so a retry
            # of the key is refused as in doubt, never run twice.
            log.warning("idempotency.outcome_not_saved", key=prepared.key, error=str(error))
            kept = True
        self._remember(prepared, status, wire)
        self.idempotency.release(prepared.key, wire, intent_kept=kept)

    async def _failed(
        self,
        prepared: PreparedCall,
        intent: IdempotencyRecord,
        previous: float | None,
        error: Refusal,
    ) -> dict[str, Any]:
        """The leader's call failed: forget the key or leave it in doubt, then fall back or
        raise; followers get the same."""
        idem = self.idempotency
        kept = True
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
            try:
                if failure_leaves_doubt(error, repeatable=prepared.repeatable):
                    doubt = attrs.evolve(
                        intent, state=RecordState.IN_DOUBT, doubt=f"{error.code}: {error.message}"
                    )
                    await idem.save(doubt, previous_expiry=previous)
                else:
                    await idem.end_intent(intent)
                kept = False
            except StorageError as exc:
                log.warning("idempotency.outcome_not_saved", key=intent.key, error=str(exc))
        answer = self._fallback(prepared, error)
        idem.release(intent.key, answer if answer is not None else error, intent_kept=kept)
        if answer is None:
            raise error
        return answer

    async def _aborted(
        self,
        prepared: PreparedCall,
        intent: IdempotencyRecord,
        previous: float | None,
        exc: BaseException,
    ) -> None:
        """The leader was cancelled (or hit a bug) mid-call: nobody knows whether the request
        left; record that, and release the followers."""
        idem = self.idempotency
        why = "the call was interrupted before its answer was stored"
        if not isinstance(exc, trio.Cancelled):
            why += f" ({type(exc).__name__})"
        doubt = attrs.evolve(intent, state=RecordState.IN_DOUBT, doubt=why)
        kept = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLEANUP_TIMEOUT):
                try:
                    if prepared.repeatable:
                        await idem.end_intent(intent)
                    else:
                        await idem.save(doubt, previous_expiry=previous)
                    kept = False
                except StorageError as error:
                    log.warning("idempotency.outcome_not_saved", key=intent.key, error=str(error))
            answer: Refusal
            if not isinstance(exc, trio.Cancelled):
                answer = InternalRefusal("internal error; see the daemon log")
            elif prepared.repeatable:
                answer = _gone()
            else:
                answer = in_doubt_refusal(attrs.evolve(doubt, doubt="the first caller went away"))
            idem.release(intent.key, answer, intent_kept=kept)


def _gone() -> IdempotencyInFlightRefusal:
    msg = "the first caller with this idempotency key went away before its call ended; retry"
    return IdempotencyInFlightRefusal(msg, retry_after=0.0)


def _storage_refusal(exc: BaseException) -> Refusal | None:
    if isinstance(exc, StoreFull):
        return StorageFullRefusal(f"the idempotency record could not be saved: {exc}")
    if isinstance(exc, StorageError):
        return InternalRefusal(f"the idempotency record could not be saved: {exc}")
    return None
