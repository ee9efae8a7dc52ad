"""The peer processes of ``kiln bench --scenario outage-peers``, started and steered together.

``PeerProcesses(root, spec)`` starts ``spec.processes`` processes of ``peers_load.py`` and waits
(bounded) until each has printed ``READY``; ``go(seconds)`` gives them one common start time a
moment ahead and a stop time ``seconds`` after it; ``stop_at`` moves the stop; ``results()``
waits for each process's JSON. Leaving the context kills whatever is still running. Each
process's stderr goes to ``root/peer-N.log``, quoted when it fails.
"""

from __future__ import annotations

import json
import math
import selectors
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import attrs

__all__ = ["PeerProcesses", "PeerSpec"]

READY_TIMEOUT: Final = 60.0  # for every process to print READY (imports, daemon connects)
START_AHEAD: Final = 0.2  # seconds between GO and the common start time
RESULT_SLACK: Final = 90.0  # seconds past the stop time a process may take to report


@attrs.frozen
class PeerSpec:
    """What each peer process runs: ``via`` ``"direct"`` (``target`` a URL) or ``"daemon"``
    (``target`` the socket, ``operation`` the call), its callers, their period, and the direct
    peer's breaker reset timeout and backoff (seconds)."""

    via: str
    target: str
    operation: str
    headers: dict[str, str]
    processes: int
    callers: int
    interval: float
    reset_timeout: float
    backoff_base: float
    backoff_cap: float

    def argv(self, index: int) -> list[str]:
        cmd = [sys.executable, "-m", "claykiln.daemon.bench.peers_load", "--via", self.via]
        cmd += ["--target", self.target, "--operation", self.operation]
        cmd += ["--callers", str(self.callers), "--slot", str(index * self.callers)]
        cmd += ["--of", str(self.processes * self.callers), "--interval", str(self.interval)]
        cmd += ["--reset-timeout", str(self.reset_timeout)]
        cmd += ["--backoff-base", str(self.backoff_base), "--backoff-cap", str(self.backoff_cap)]
        for name, value in self.headers.items():
            cmd += ["--header", f"{name}:{value}"]
        return cmd


class PeerProcesses:
    """``spec.processes`` peer processes (module doc)."""

    def __init__(self, root: Path, spec: PeerSpec) -> None:
        self.root = root
        self.spec = spec
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stop = math.inf

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        for index in range(self.spec.processes):
            with (self.root / f"peer-{index}.log").open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        self.spec.argv(index),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                    )
                )
        deadline = time.monotonic() + READY_TIMEOUT
        for index, proc in enumerate(self.procs):
            assert proc.stdout is not None
            line = _readline_before(proc.stdout, deadline)
            if line.strip() != b"READY":
                self._kill_all()
                msg = f"peer process {index} did not start: {line!r}; {self._log(index)}"
                raise RuntimeError(msg)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._kill_all()

    def go(self, seconds: float) -> float:
        """Start every process's callers at one moment ``START_AHEAD`` from now, stopping
        ``seconds`` later (``math.inf``: until ``stop_at``); that start time."""
        start = time.monotonic() + START_AHEAD
        self.stop = start + seconds
        self._tell(f"GO {start!r} {self._stop_word()}")
        return start

    def stop_at(self, when: float) -> None:
        """No call starts after ``when`` (monotonic) in any process."""
        self.stop = when
        self._tell(f"STOP {self._stop_word()}")

    def results(self) -> list[dict[str, Any]]:
        """Every process's JSON result, in process order; raises ``RuntimeError`` naming a
        process that failed, and ``subprocess.TimeoutExpired`` if one overran."""
        out = []
        for index, proc in enumerate(self.procs):
            timeout = max(1.0, self.stop + RESULT_SLACK - time.monotonic())
            stdout, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                msg = f"peer process {index} exited {proc.returncode}; {self._log(index)}"
                raise RuntimeError(msg)
            out.append(json.loads(stdout.splitlines()[-1]))
        return out

    def _stop_word(self) -> str:
        # A stop beyond any run: the callers wait for a STOP line.
        return repr(self.stop if math.isfinite(self.stop) else time.monotonic() + 86_400.0)

    def _tell(self, line: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()

    def _log(self, index: int) -> str:
        path = self.root / f"peer-{index}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"log:\n{text[-4000:]}"

    def _kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None and not stream.closed:
                    stream.close()


def _readline_before(stream: Any, deadline: float) -> bytes:
    """One line from a child's pipe, or b"" when none comes before ``deadline``."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(max(0.0, deadline - time.monotonic())):
            return b""
    line: bytes = stream.readline()
    return line
