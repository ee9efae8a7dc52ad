"""The Prometheus textfile: ``[daemon] metrics_textfile`` rewritten every ``metrics_interval``.

node_exporter's textfile collector reads every ``*.prom`` file of its directory at each scrape;
a file it catches half written is an error for that scrape. So the text is rendered on the trio
thread (``render_metrics``: it reads the components' snapshots) and written by a worker thread
to a temporary file in the same directory (its name does not end in ``.prom``), which then
replaces the target in one ``rename``: a reader sees the old file or the new one, never a mix.

``run_textfile`` is a task of the daemon (started with the actors): it reads the path and the
interval from the running config each round, so a reload turns the file on, off or elsewhere.
A write that fails (a missing directory, a full disk) logs ``metrics.write_failed`` once per
distinct error until a write succeeds; the daemon carries on. The file is left in place when
the daemon stops: alert on its age (``node_textfile_mtime_seconds``), see docs/operations.md.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final

import trio

from claykiln.daemon.logs import get_logger
from claykiln.daemon.metrics import render_metrics
from claykiln.daemon.runtime import Runtime

__all__ = ["FILE_MODE", "run_textfile", "write_atomically"]

log = get_logger("claykiln.daemon")

FILE_MODE: Final = 0o644  # node_exporter runs as its own user
IDLE_RECHECK: Final = 5.0  # seconds between looks at the config while no file is configured


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename (blocking: run it in a worker thread).
    Raises ``OSError``; a failed write leaves no temporary file behind."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


async def run_textfile(
    runtime: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Write the textfile now and then every ``metrics_interval`` while one is configured."""
    task_status.started()
    last_error: str | None = None
    while True:
        daemon = runtime.config.daemon
        path = daemon.metrics_textfile
        if path is None:
            await trio.sleep(IDLE_RECHECK)
            continue
        data = render_metrics(runtime)
        try:
            await trio.to_thread.run_sync(write_atomically, path, data)
        except OSError as exc:
            # Not str(exc): it names the temporary file, a new one each round.
            error = f"{type(exc).__name__}: {exc.strerror or exc}"
            if error != last_error:
                log.warning("metrics.write_failed", path=str(path), error=error)
                last_error = error
        else:
            last_error = None
        await trio.sleep(daemon.metrics_interval)
