"""The cache methods at the edge: list inline, purge (admin) once on disk."""

from __future__ import annotations

import os

import pytest
import trio

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon.methods import build_methods
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.types import RequestContext
from claykiln.daemon.runtime import Runtime

ADMIN = RequestContext(PeerCred(pid=os.getpid(), uid=os.geteuid(), gid=0), 1, 3, admin=True)


async def test_cache_list_and_purge(runtime: Runtime) -> None:
    """list shows each kept answer by operation and key; purge deletes and counts."""
    table = build_methods(runtime)
    cache_list, purge = table["cache.list"].inline, table["cache.purge"].handler
    assert cache_list is not None and purge is not None
    runtime.cache.remember("me\x00abc", {"status": 200, "body": {}})
    runtime.cache.remember("push_row\x00def", {"status": 201, "body": {}})
    with trio.fail_after(10):
        assert await purge(ADMIN, {"operation": "nope"}) == {"operation": "nope", "purged": 0}
        listed = cache_list(ADMIN, {})
        assert [(e["operation"], e["key"], e["status"]) for e in listed] == [
            ("me", "abc", 200),
            ("push_row", "def", 201),
        ]
        assert [e["key"] for e in cache_list(ADMIN, {"operation": "me", "limit": 5})] == ["abc"]
        assert await purge(ADMIN, {"operation": "me"}) == {"operation": "me", "purged": 1}
        assert await purge(ADMIN, {}) == {"operation": None, "purged": 1}
    with pytest.raises(BadRequestRefusal, match="limit"):
        cache_list(ADMIN, {"limit": 0})
    assert table["cache.purge"].admin
