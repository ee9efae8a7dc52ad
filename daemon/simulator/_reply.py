"""What the simulator answers: a ``Reply`` value, JSON replies, and the kinds of paths it serves."""

from __future__ import annotations

import json
from typing import Any

import attrs

__all__ = [
    "CONTROL_PREFIX",
    "PUBLIC_PREFIX",
    "WEBHOOK_PREFIX",
    "Reply",
    "json_reply",
    "path_kind",
]

WEBHOOK_PREFIX = "/v3/sources/webhook/"
PUBLIC_PREFIX = "/public/v0"
CONTROL_PREFIX = "/_sim/"

_JSON_HEADERS = ((b"content-type", b"application/json"),)


@attrs.frozen
class Reply:
    """An HTTP answer: status, JSON body bytes and extra headers (content-type is included)."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = _JSON_HEADERS


def json_reply(status: int, payload: Any, extra: tuple[tuple[bytes, bytes], ...] = ()) -> Reply:
    """A Reply with ``payload`` encoded as compact JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status, body, _JSON_HEADERS + extra)


def path_kind(path: str) -> str:
    """What a path is for: "webhook", "public", "control" or "other" (the counters' keys)."""
    if path.startswith(WEBHOOK_PREFIX):
        return "webhook"
    if path.startswith(PUBLIC_PREFIX):
        return "public"
    if path.startswith(CONTROL_PREFIX):
        return "control"
    return "other"
