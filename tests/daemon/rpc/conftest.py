"""Fixtures shared by the RPC server's tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temp dir under /tmp (AF_UNIX paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="kiln-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
