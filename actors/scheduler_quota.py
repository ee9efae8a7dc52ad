"""The webhook sources the scheduler holds at Clay's lifetime cap, and the counts it read.

``SourceHolds`` belongs to the scheduler actor (actors/scheduler.py) and is touched by its task
only; ``view`` is republished as a frozenset whenever the held set changes, so the submit side
reads it without an ask (``Scheduler.is_held``).

- ``quota(source)``: the source's count, read from storage once, then kept.
- ``apply(tally)``: after a write that counted rows (``QuotaTally``, actors/jobs_quota.py): the
  ``quota.near_cap`` alerts (80 %, 95 %), newly held sources (``quota.exhausted``), the counts.
- ``release(source)``: un-hold a source durably (``quota.released``); its queue is looked at.
"""

from __future__ import annotations

from typing import Any

from claykiln.actors.jobs_quota import QuotaTally, SourceQuota, quota_put
from claykiln.actors.jobs_store import JobStore
from claykiln.actors.log import alert, get_logger

__all__ = ["SourceHolds"]

log = get_logger("claykiln.outbox")


class SourceHolds:
    """See the module docstring."""

    def __init__(self, jobs: JobStore, held: set[str] | None = None) -> None:
        self.jobs = jobs
        self.held: set[str] = set(held or ())
        self.quotas: dict[str, SourceQuota] = {}
        self.view: frozenset[str] = frozenset(self.held)

    def reset(self, held: set[str]) -> None:
        """The sources start-up found held."""
        self.held = set(held)
        self.view = frozenset(self.held)

    def quota(self, source: str) -> SourceQuota:
        if source not in self.quotas:
            self.quotas[source] = self.jobs.quota(source)
        return self.quotas[source]

    def to_wire(self) -> dict[str, dict[str, Any]]:
        """The held sources with their counts (for ``status``)."""
        return {s: self.quotas.get(s, SourceQuota(s)).to_wire() for s in self.held}

    def apply(self, tally: QuotaTally) -> None:
        """Once the counts of ``tally`` are written: the alerts, the new holds, the counts."""
        for quota, level, cap in tally.crossings:
            alert(
                log,
                "quota.near_cap",
                severity="warning",
                source=quota.source,
                rows=quota.rows,
                cap=cap,
                percent=level,
            )
        for source, quota in tally.quotas.items():
            if quota.held and source not in self.held:
                self.held.add(source)
                self.view = frozenset(self.held)
                alert(
                    log,
                    "quota.exhausted",
                    severity="critical",
                    source=source,
                    rows=quota.rows,
                    held_by=quota.held_by,
                )
            self.quotas[source] = quota

    async def release(self, source: str) -> SourceQuota:
        """Un-hold ``source`` durably; raises ``StorageError`` when it was not saved."""
        quota = self.quota(source).released()
        await self.jobs.write([quota_put(quota)])
        self.quotas[source] = quota
        self.held.discard(source)
        self.view = frozenset(self.held)
        log.info("quota.released", source=source, rows=quota.rows)
        return quota
