"""Argument checking the method families share: strict names, typed maps.

Every method checks its named arguments strictly, so a typo never silently changes behavior:
unknown names are refused with ``bad_request`` naming them and the allowed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from claykiln.actors.errors import BadRequestRefusal

__all__ = ["check_names", "str_map"]


def check_names(method: str, args: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Raise ``BadRequestRefusal`` naming every argument of ``args`` not in ``allowed``."""
    unknown = sorted(set(args) - allowed)
    if unknown:
        allowed_text = ", ".join(sorted(allowed)) or "(none)"
        msg = f"{method}: unknown argument(s) {', '.join(unknown)}; allowed: {allowed_text}"
        raise BadRequestRefusal(msg)


def str_map(method: str, name: str, value: object, *, scalars: bool = False) -> dict[str, Any]:
    """``value`` as a map of string keys to strings (or, with ``scalars``, to strings, numbers
    or booleans); None is an empty map. Raises ``BadRequestRefusal`` naming ``name`` else."""
    if value is None:
        return {}
    allowed = (str, int, float, bool) if scalars else (str,)
    if not isinstance(value, dict) or any(
        not isinstance(k, str) or not isinstance(v, allowed) for k, v in value.items()
    ):
        kind = "strings, numbers or booleans" if scalars else "strings"
        msg = f"{method}: {name} must be a map of string keys to {kind}"
        raise BadRequestRefusal(msg)
    return dict(value)
