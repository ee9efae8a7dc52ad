"""The client tests' fixture server (``fixture_server.py``) on a socket in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from fixture_server import FixtureServer


@pytest.fixture
async def server(tmp_path: Path, nursery: trio.Nursery) -> FixtureServer:
    path = tmp_path / "k.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to ~107 bytes"
    srv = FixtureServer(path)
    await nursery.start(srv.serve)
    return srv
