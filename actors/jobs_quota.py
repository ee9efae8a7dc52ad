"""Clay's lifetime cap per webhook source: the durable count and its decisions (pure).

A Clay table webhook accepts ``lifetime_rows`` rows in its life (50,000), then answers every
push with 403 "Record limit reached for webhook" and drops the row. The outbox counts the rows
each source accepted (a 2xx to a job), alerts once at 80 % and once at 95 % of the cap, and
holds a source when Clay answered that 403 or its count reached the cap: the source's waiting
jobs stay where they are, burning no attempts, until an operator releases it (``quota.release``:
Clay raised the cap, or the count was wrong) or kills them into the dead-letter queue.

Storage: table ``quota``, source -> ``SourceQuota.to_value()``. A source is the upstream and
the rendered path, e.g. ``clay:/v3/sources/webhook/pull-in-data-from-a-webhook-1a2b``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from claykiln.storage import Put

__all__ = [
    "ALERT_LEVELS",
    "QUOTA_TABLE",
    "QuotaTally",
    "SourceQuota",
    "quota_put",
    "source_name",
]

QUOTA_TABLE: Final = "quota"
ALERT_LEVELS: Final = (80, 95)
"""Percentages of the cap at which an alert is logged, once each."""


def source_name(upstream: str, path: str) -> str:
    """The webhook source a rendered ``path`` of ``upstream`` pushes to."""
    return f"{upstream}:{path}"


@attrs.frozen
class SourceQuota:
    """One source's count (``cap``: the cap it was last counted against, None before the
    first). ``alerted``: the highest level (percent) already alerted, 0 none.
    ``held_at``: wall time the source was held (a 403 with the cap message, or the count
    reached the cap), None while it is open; ``held_by``: ``"clay"`` or ``"count"``."""

    source: str
    rows: int = 0
    alerted: int = 0
    held_at: float | None = None
    held_by: str | None = None
    cap: int | None = None  # the cap it was last counted against

    @property
    def held(self) -> bool:
        return self.held_at is not None

    def count_row(self, cap: int, now: float) -> tuple[SourceQuota, int | None]:
        """One more row accepted: the new count, and the alert level newly crossed (None).
        Reaching ``cap`` holds the source (Clay refuses the next row anyway)."""
        rows = self.rows + 1
        crossed = None
        for level in ALERT_LEVELS:
            if level > self.alerted and rows * 100 >= level * cap:
                crossed = level
        alerted = crossed if crossed is not None else self.alerted
        out = attrs.evolve(self, rows=rows, alerted=alerted, cap=cap)
        if rows == cap and not self.held:
            out = attrs.evolve(out, held_at=now, held_by="count")
        return out, crossed

    def exhausted(self, now: float) -> SourceQuota:
        """Clay answered 403 "Record limit reached": hold the source (kept if already held)."""
        if self.held:
            return self
        return attrs.evolve(self, held_at=now, held_by="clay", alerted=max(ALERT_LEVELS))

    def released(self) -> SourceQuota:
        """An operator released the source: its jobs run again (a new 403 holds it again)."""
        return attrs.evolve(self, held_at=None, held_by=None)

    def to_value(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "alerted": self.alerted}
        if self.cap is not None:
            out["cap"] = self.cap
        if self.held_at is not None:
            out["held_at"] = self.held_at
            out["held_by"] = self.held_by
        return out

    @classmethod
    def from_value(cls, source: str, value: Any) -> SourceQuota:
        """The stored count of ``source`` (a fresh one for a missing or malformed value)."""
        if not isinstance(value, Mapping):
            return cls(source)
        try:
            held_at = value.get("held_at")
            return cls(
                source=source,
                rows=int(value.get("rows", 0)),
                alerted=int(value.get("alerted", 0)),
                held_at=float(held_at) if held_at is not None else None,
                held_by=value.get("held_by"),
                cap=int(value["cap"]) if value.get("cap") is not None else None,
            )
        except (TypeError, ValueError):
            return cls(source)

    def to_wire(self) -> dict[str, Any]:
        """What ``quota.list`` answers for this source."""
        cap = self.cap
        return {
            "source": self.source,
            "rows": self.rows,
            "cap": cap,
            "used": round(self.rows / cap, 4) if cap else None,
            "held": self.held,
            "held_at": self.held_at,
            "held_by": self.held_by,
        }


def quota_put(quota: SourceQuota) -> Put:
    """The write that stores ``quota``."""
    return Put(QUOTA_TABLE, quota.source.encode("utf-8"), quota.to_value())


@attrs.define
class QuotaTally:
    """The counts of one write: the sources changed (``quotas``) and the alert levels crossed
    (``crossings``: quota, percent, cap). ``load`` gives a source's count before this tally."""

    load: Callable[[str], SourceQuota]
    quotas: dict[str, SourceQuota] = attrs.Factory(dict)
    crossings: list[tuple[SourceQuota, int, int]] = attrs.Factory(list)

    def count(self, source: str, cap: int, *, accepted: bool, now: float) -> None:
        """A row ``source`` accepted, or (``accepted`` False) Clay's refusal at its cap."""
        quota = self.quotas.get(source) or self.load(source)
        if accepted:
            quota, level = quota.count_row(cap, now)
            if level is not None:
                self.crossings.append((quota, level, cap))
        else:
            quota = attrs.evolve(quota.exhausted(now), cap=cap)
        self.quotas[source] = quota

    def puts(self) -> list[Put]:
        """The writes that store the changed counts."""
        return [quota_put(quota) for quota in self.quotas.values()]
