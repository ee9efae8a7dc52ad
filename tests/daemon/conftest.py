"""Shared fixture for the daemon's in-process tests: a started ``Runtime`` on a real store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from claykiln.daemon.config import load_config
from claykiln.daemon.config.credentials import CredentialStore
from claykiln.daemon.runtime import Runtime
from claykiln.daemon.start import start_runtime
from claykiln.storage import Store

START_TIMEOUT = 10.0  # seconds; a hang fails instead of stalling CI
# One upstream on a closed local port: pools start without connecting anywhere.
CONFIG = '[upstreams.clay]\nbase_url = "http://127.0.0.1:9"\n'


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """Every actor of a daemon started in-process on a real LMDB store (no socket, no signals)."""
    config_file = tmp_path / "kiln.toml"
    config_file.write_text(CONFIG, encoding="utf-8")
    config = load_config(
        config_file, socket=tmp_path / "kiln.sock", state_dir=tmp_path / "state", env={}
    )
    store = Store.open(tmp_path / "state" / "store")
    try:
        async with trio.open_nursery() as root:
            with trio.fail_after(START_TIMEOUT):
                started = await start_runtime(
                    root,
                    config,
                    CredentialStore.load((), config.daemon.credentials_dir),
                    store,
                    version="0+test",
                    started_at=time.monotonic(),
                )
            yield started
            with trio.fail_after(START_TIMEOUT):
                await started.writer.aclose()
            root.cancel_scope.cancel()
    finally:
        store.close()
