"""A ``kiln serve`` daemon as a real child process, driven the way systemd drives it.

``DaemonProcess`` owns a directory ``root`` (keep it short: AF_UNIX paths are < 108 bytes) that
holds the config file, a credentials directory (``CREDENTIALS_DIRECTORY``, as systemd's
LoadCredential= provides it), the state dir, the socket, the daemon's log file (stdout and
stderr, JSON lines when the config says ``log_format = "json"``) and a datagram socket exported
as ``NOTIFY_SOCKET``. ``start`` returns once the daemon sent ``READY=1`` there.

Lifecycle: ``start`` -> (``signal`` | ``wait`` | ``stop`` | ``kill``) -> ``start`` again on the
same paths (state, log and notify socket are reused) ... -> ``close``. ``stop`` and ``kill`` are
safe at any time and more than once; they are shielded from cancellation and bounded, so the
process is always reaped. ``close`` is synchronous (usable outside trio, e.g. from a sync
fixture teardown): it kills and reaps a running process and closes the notify socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal as signals
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import trio

__all__ = ["DaemonProcess", "DaemonStartError"]

READY_TIMEOUT: Final = 30.0  # seconds from spawn to READY=1
STOP_TIMEOUT: Final = 5.0  # seconds from SIGTERM to SIGKILL
KILL_TIMEOUT: Final = 3.0  # seconds to reap after SIGKILL
READY_POLL: Final = 0.05  # seconds between exit checks while waiting for READY=1
NOTIFY_DATAGRAM: Final = 4096
LOG_TAIL_CHARS: Final = 3000
# Variables a parent under systemd may carry that must not leak into the child daemon.
INHERITED_VARS: Final = (
    "KILN_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "NOTIFY_SOCKET",
    "CREDENTIALS_DIRECTORY",
)


class DaemonStartError(Exception):
    """The daemon exited, or stayed silent, before READY=1; the message quotes its log's tail."""


class DaemonProcess:
    """One daemon process on paths under ``root``.

    ``credentials`` maps credential names to values (written one file each, a newline added);
    ``env`` is added to every start's environment. ``socket`` and ``state_dir`` may be
    reassigned before ``start``; the command line is built at each start.
    """

    def __init__(
        self,
        root: Path,
        config_text: str,
        *,
        credentials: Mapping[str, str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.socket = root / "kiln.sock"
        self.state_dir = root / "state"
        self.config_path = root / "kiln.toml"
        self.creds_dir = root / "credentials"
        self.log_path = root / "kiln.log"
        self.notify_path = root / "notify.sock"
        self.env = dict(env or {})
        self.creds_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, value in credentials.items():
            (self.creds_dir / name).write_text(value + "\n")
        self.write_config(config_text)
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None
        self._events: list[dict[str, Any]] = []
        self._log_offset = 0
        self._partial = b""

    @property
    def pid(self) -> int | None:
        """The pid of the latest process (None: never started)."""
        return None if self.proc is None else self.proc.pid

    def write_config(self, text: str) -> None:
        """Replace the config file (a running daemon reads it again on SIGHUP)."""
        self.config_path.write_text(text)

    def command(self) -> list[str]:
        """The daemon's command line for the current paths."""
        return [
            sys.executable,
            "-m",
            "claykiln.daemon",
            "serve",
            "--config",
            str(self.config_path),
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state_dir),
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self, *, ready_within: float = READY_TIMEOUT, env_extra: Mapping[str, str] | None = None
    ) -> None:
        """Spawn the daemon and return once it sent READY=1.

        Raises ``DaemonStartError`` (naming the log and quoting its tail) if the process exits
        first or is not ready within ``ready_within`` s, or if one is already running. On any error
        or cancellation the process is killed and reaped before this returns.
        """
        if self.proc is not None and self.proc.poll() is None:
            msg = f"the daemon (pid {self.proc.pid}) is running; stop it before starting again"
            raise DaemonStartError(msg)
        env = {k: v for k, v in os.environ.items() if k not in INHERITED_VARS}
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        env["CREDENTIALS_DIRECTORY"] = str(self.creds_dir)
        env.update(self.env)
        env.update(env_extra or {})
        notify = self._bind_notify()
        try:
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(  # noqa: ASYNC220 -- spawning does not block
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
                )
            await self._await_ready(self.proc, notify, ready_within)
        except BaseException:
            await self.kill()
            raise

    def _bind_notify(self) -> socket.socket:
        # Kept open across restarts until close(): the daemon's later STATUS=/WATCHDOG=1/
        # STOPPING=1 datagrams land here (readable through notifications()) instead of failing.
        if self._notify is None:
            self.notify_path.unlink(missing_ok=True)  # left by an earlier close()
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.setblocking(False)
            notify.bind(str(self.notify_path))
            self._notify = notify
        return self._notify

    async def _await_ready(
        self, proc: subprocess.Popen[bytes], notify: socket.socket, ready_within: float
    ) -> None:
        with trio.move_on_after(ready_within):
            while True:
                if proc.poll() is not None:
                    msg = f"the daemon exited {proc.returncode} before READY=1; {self._log_ref()}"
                    raise DaemonStartError(msg)
                with trio.move_on_after(READY_POLL):
                    await trio.lowlevel.wait_readable(notify)
                with contextlib.suppress(BlockingIOError):
                    if b"READY=1" in notify.recv(NOTIFY_DATAGRAM).split(b"\n"):
                        return
        msg = f"the daemon was not READY=1 within {ready_within:g} s; {self._log_ref()}"
        raise DaemonStartError(msg)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process (a no-op once it was reaped)."""
        if self.proc is not None:
            self.proc.send_signal(signum)

    async def wait(self) -> int:
        """Wait for the process to exit and return its status (negative: killed by a signal).

        Raises ``RuntimeError`` if it was never started. Cancellation leaves it running.
        """
        proc = self.proc
        if proc is None:
            msg = "the daemon was never started; call start() first"
            raise RuntimeError(msg)
        await _exited(proc)
        assert proc.returncode is not None
        return proc.returncode

    async def stop(self, grace: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then kill; the exit status (None: never started).

        Shielded from cancellation: the process is always reaped.
        """
        proc = self.proc
        if proc is None:
            return None
        with trio.CancelScope(shield=True):
            if proc.poll() is None:
                proc.send_signal(signals.SIGTERM)
                with trio.move_on_after(grace):
                    await _exited(proc)
            if proc.poll() is None:
                await self.kill()
        return proc.poll()

    async def kill(self) -> None:
        """SIGKILL the process (if running) and reap it; shielded, bounded by ``KILL_TIMEOUT``."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with trio.CancelScope(shield=True):
                proc.kill()
                with trio.move_on_after(KILL_TIMEOUT):
                    await _exited(proc)

    def close(self) -> None:
        """Kill and reap a running process (blocking, bounded) and close the notify socket."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(KILL_TIMEOUT)
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    # -- what the daemon said ----------------------------------------------------------------

    def notifications(self) -> list[str]:
        """Every sd_notify datagram received since the last call (READY=1 is taken by start)."""
        out: list[str] = []
        if self._notify is None:
            return out
        while True:
            try:
                out.append(self._notify.recv(NOTIFY_DATAGRAM).decode(errors="replace"))
            except BlockingIOError:
                return out

    def events(self, names: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every JSON log line so far, across restarts (read incrementally); optionally only the
        events named ``names`` (one name or several)."""
        self._read_log()
        if names is None:
            return list(self._events)
        wanted = {names} if isinstance(names, str) else set(names)
        return [e for e in self._events if e.get("event") in wanted]

    def _read_log(self) -> None:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                data = log.read()
        except FileNotFoundError:
            return
        self._log_offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue  # not a JSON line (a traceback printed before logging was set up)
            if isinstance(item, dict):
                self._events.append(item)

    def log_text(self) -> str:
        """The whole log so far ("" before the first start)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self) -> str:
        """The log's last ``LOG_TAIL_CHARS`` characters."""
        return self.log_text()[-LOG_TAIL_CHARS:] or "(empty)"

    def _log_ref(self) -> str:
        return f"its log {self.log_path} ends with:\n{self.log_tail()}"


async def _exited(proc: subprocess.Popen[bytes]) -> None:
    """Return once ``proc`` has exited and is reaped (its ``returncode`` set); cancellable."""
    if proc.poll() is not None:
        return
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3 (or reaped meanwhile): a thread
        await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)
    proc.wait()  # readable pidfd: the child has exited, so this reaps it at once
