"""Write operations: what callers hand to the writer, and their validated, encoded form."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Delete", "Op", "PreparedOp", "Put"]


@attrs.frozen
class Put:
    """Set ``key`` in ``table`` to ``value`` (msgpack-encodable), replacing any old value."""

    table: str
    key: bytes
    value: Any


@attrs.frozen
class Delete:
    """Remove ``key`` from ``table``; deleting a missing key is not an error."""

    table: str
    key: bytes


Op = Put | Delete


@attrs.frozen
class PreparedOp:
    """An op checked against the store and encoded; ``value is None`` means delete."""

    table: str
    key: bytes
    value: bytes | None
