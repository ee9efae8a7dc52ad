"""The client's subscriptions without a daemon: a sync subscriber loads no heavy module, each
flavor gets its own kind of subscription, and the arguments are checked before connecting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from claykiln.daemon.client import AsyncioClient, Client, DaemonUnavailable, TrioClient
from claykiln.daemon.client._subscribe import Subscription, subscribe_args
from claykiln.daemon.client._subscribe_async import AsyncioSubscription, TrioSubscription

PROBE = """
import json, sys
from claykiln.daemon import Client
sub = Client("/nonexistent.sock").subscribe(["tick"])
heavy = ("trio", "asyncio", "structlog", "claykiln.actors", "claykiln.storage")
print(json.dumps(sorted(m for m in sys.modules if m in heavy)))
"""


def test_a_sync_subscription_loads_neither_trio_nor_asyncio() -> None:
    """Making a sync subscription imports no async framework and nothing of the server."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_each_flavor_gets_its_own_subscription(tmp_path: Path) -> None:
    """Client -> Subscription, TrioClient -> TrioSubscription, AsyncioClient ->
    AsyncioSubscription, on the client's socket with its timeouts (not connected yet)."""
    path = tmp_path / "kiln.sock"
    sync = Client(path, timeout=3.0, connect_timeout=0.5).subscribe(["tick"], buffer=5)
    assert isinstance(sync, Subscription)
    assert (sync.socket_path, sync.timeout, sync.connect_timeout) == (path, 3.0, 0.5)
    assert isinstance(TrioClient(path).subscribe(), TrioSubscription)
    assert isinstance(AsyncioClient(path).subscribe(), AsyncioSubscription)


def test_subscribe_arguments() -> None:
    """Only what is given is sent; a bare string is refused (a list of topics is meant)."""
    assert subscribe_args(None, None) == {}
    assert subscribe_args(("tick", "gate"), 8) == {"topics": ["tick", "gate"], "buffer": 8}
    with pytest.raises(TypeError, match="list of topic names"):
        subscribe_args("tick", None)


def test_no_daemon_is_daemon_unavailable_after_connect_timeout(tmp_path: Path) -> None:
    """Opening a subscription where no daemon listens keeps trying for connect_timeout, then
    raises DaemonUnavailable naming the socket."""
    path = tmp_path / "kiln.sock"
    began = time.monotonic()
    with pytest.raises(DaemonUnavailable, match=re.escape(str(path))):
        Client(path, connect_timeout=0.3).subscribe().open()
    assert 0.3 <= time.monotonic() - began < 10
