"""The client's outbox and dead-letter methods, written once for every flavor (``_methods.py``).

``OutboxMethods`` is a base of ``ClientSurface``: each method builds an ``Rpc`` and hands it to
the flavor's ``_dispatch``, so on a ``Client`` it returns the value and on ``TrioClient`` /
``AsyncioClient`` a coroutine of it. The wire methods: docs/protocol.md, "Submit: the durable
outbox" and "The dead-letter queue".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["OutboxMethods"]

Reply = TypeVar("Reply")
MapReply = TypeVar("MapReply")
ListReply = TypeVar("ListReply")


UNSET: Any = object()  # ``json`` not given (``json=None`` sends JSON null)


def _given(**values: Any) -> dict[str, Any]:
    """The arguments that were given (None means "not given")."""
    return {k: v for k, v in values.items() if v is not None}


class OutboxMethods(Generic[Reply, MapReply, ListReply]):
    """``submit``, ``submit_many``, ``job``, ``jobs``, ``dlq_*`` and ``quota_*``."""

    def _rpc(self, method: str, args: Mapping[str, Any], timeout: float | None, **kw: Any) -> Any:
        """Send ``method`` (``ClientSurface`` builds the ``Rpc`` and dispatches it)."""
        raise NotImplementedError

    def submit(
        self,
        operation: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        json: Any = UNSET,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        lane: str | None = None,
        deadline_ms: int | None = None,
        idempotency_key: str | None = None,
        not_before: float | None = None,
        timeout: float | None = None,
        retry_safe: bool | None = None,
    ) -> MapReply:
        """``submit``: hand the call to the daemon's durable outbox; it is on disk when this
        returns ``{job_id, state, existing, idempotency_key, due_at}``. The daemon runs it
        (retries, pacing, Clay's limits) and keeps it in the dead-letter queue if it can never
        succeed. ``not_before``: unix seconds. A second submit with the same key (given, or
        derived where the operation derives keys) answers the first job (``existing: true``).
        ``deadline_ms`` is each attempt's budget. With an ``idempotency_key`` a submit lost with
        its connection is sent again (the key makes that safe)."""
        if json is not UNSET and body is not None:
            msg = "pass either json= or body=, not both"
            raise ValueError(msg)
        args: dict[str, Any] = {"operation": operation}
        args.update(
            _given(
                path_params=dict(path_params) if path_params is not None else None,
                query=dict(query) if query is not None else None,
                body=body,
                headers=dict(headers) if headers is not None else None,
                lane=lane,
                deadline_ms=deadline_ms,
                idempotency_key=idempotency_key,
                not_before=not_before,
            )
        )
        if json is not UNSET:
            args["json"] = json
        result: MapReply = self._rpc("submit", args, timeout, retry_safe=retry_safe)
        return result

    def submit_many(
        self, items: Sequence[Mapping[str, Any]], *, timeout: float | None = None
    ) -> ListReply:
        """``submit_many``: up to 1000 submits (each a map of ``submit``'s arguments, the
        operation included) in one durable write; one answer per item, in order, an item the
        daemon refused as ``{"error": {code, message, ...}}``."""
        result: ListReply = self._rpc("submit_many", {"items": [dict(i) for i in items]}, timeout)
        return result

    def job(self, job_id: str, *, timeout: float | None = None) -> Reply:
        """``jobs.get``: the job (state, request, attempts, history, ...), or None."""
        result: Reply = self._rpc("jobs.get", {"job_id": job_id}, timeout)
        return result

    def jobs(
        self,
        state: str,
        *,
        after: str | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> MapReply:
        """``jobs.list``: ``{items, next}``, the jobs in ``state`` (pending, retry_wait,
        in_flight, dead, done); pass ``next`` as ``after`` for the next page."""
        args = _given(state=state, after=after, limit=limit)
        result: MapReply = self._rpc("jobs.list", args, timeout)
        return result

    def dlq_list(
        self,
        *,
        operation: str | None = None,
        reason: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        after: str | None = None,
        limit: int | None = None,
        full: bool = False,
        timeout: float | None = None,
    ) -> MapReply:
        """``dlq.list`` (``dlq.export`` with ``full``: whole records): ``{items, next}``, dead
        jobs oldest first, filtered by operation, reason and age in seconds."""
        args = _given(
            operation=operation,
            reason=reason,
            older_than=older_than,
            newer_than=newer_than,
            after=after,
            limit=limit,
        )
        result: MapReply = self._rpc("dlq.export" if full else "dlq.list", args, timeout)
        return result

    def dlq_get(self, job_id: str, *, timeout: float | None = None) -> Reply:
        """``dlq.get``: the dead job with its request and history, or None."""
        result: Reply = self._rpc("dlq.get", {"job_id": job_id}, timeout)
        return result

    def dlq_retry(
        self,
        job_id: str | None = None,
        *,
        operation: str | None = None,
        reason: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        all: bool = False,
        rate: float | None = None,
        timeout: float | None = None,
    ) -> MapReply:
        """``dlq.retry`` (admin): one job, the dead jobs a filter selects, or ``all=True``;
        back to pending with their keys, due times spread at ``rate`` per second."""
        args = _given(
            job_id=job_id,
            operation=operation,
            reason=reason,
            older_than=older_than,
            newer_than=newer_than,
            rate=rate,
        )
        if all:
            args["all"] = True
        result: MapReply = self._rpc("dlq.retry", args, timeout)
        return result

    def dlq_kill(
        self,
        job_id: str | None = None,
        *,
        operation: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
    ) -> MapReply:
        """``dlq.kill`` (admin): a waiting job, or the waiting jobs of an operation and/or a
        queue, to the dead-letter queue (reason ``killed``)."""
        args = _given(job_id=job_id, operation=operation, queue=queue)
        result: MapReply = self._rpc("dlq.kill", args, timeout)
        return result

    def dlq_purge(
        self,
        *,
        operation: str | None = None,
        reason: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        all: bool = False,
        confirm: bool = False,
        timeout: float | None = None,
    ) -> MapReply:
        """``dlq.purge`` (admin): delete the dead jobs a filter (or ``all=True``) selects,
        only with ``confirm=True``; without it, ``{matched}`` says how many would go."""
        args = _given(
            operation=operation, reason=reason, older_than=older_than, newer_than=newer_than
        )
        if all:
            args["all"] = True
        if confirm:
            args["confirm"] = True
        result: MapReply = self._rpc("dlq.purge", args, timeout)
        return result

    def quota_list(
        self, *, after: str | None = None, limit: int | None = None, timeout: float | None = None
    ) -> MapReply:
        """``quota.list``: rows counted per webhook source against Clay's lifetime cap, and
        which sources are held."""
        result: MapReply = self._rpc("quota.list", _given(after=after, limit=limit), timeout)
        return result

    def quota_release(self, source: str, *, timeout: float | None = None) -> MapReply:
        """``quota.release`` (admin): let a held source's jobs run again."""
        result: MapReply = self._rpc("quota.release", {"source": source}, timeout)
        return result
