"""Fixtures for end-to-end tests: a simulator in this process, daemons as real processes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from kiln_harness import API_KEY, KilnProcess

from claykiln.daemon.simulator import RunningSimulator, open_simulator


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with open_simulator(api_key=API_KEY, webhook_rate=1000, webhook_burst=1000) as running:
        yield running


@pytest.fixture
def kiln(tmp_path: Path) -> Iterator[Callable[..., KilnProcess]]:
    """A factory of daemon processes; every one is killed at teardown."""
    made: list[KilnProcess] = []
    short = Path(tempfile.mkdtemp(prefix="kiln-e2e-", dir="/tmp"))  # AF_UNIX paths < 108 bytes

    def make(config_text: str, name: str = "d") -> KilnProcess:
        proc = KilnProcess(short / f"{name}{len(made)}", config_text)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.close()
    shutil.rmtree(short, ignore_errors=True)
