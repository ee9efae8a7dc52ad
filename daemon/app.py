"""The daemon's lifecycle: one root nursery, actors in dependency order, signals, drain.

Start (in order): logging -> storage (reader_check, schema check) -> writer -> idempotency
store (records left in flight become in doubt), fallback cache -> breakers, gate, lanes ->
upstream pools -> call pipeline -> outbox scheduler (jobs left in flight become in doubt) ->
server on the Unix socket -> READY=1.

Stop (SIGTERM / SIGINT): STOPPING=1; the server stops accepting and answers new requests with
``shutting_down``; in-flight requests get ``grace_period`` seconds, and so do jobs in flight
(the scheduler starts no new one; one still running then stays in flight on disk, in doubt at
the next start); the writer flushes everything
queued; the environment is closed; exit 0. A second SIGTERM/SIGINT during the drain cuts the
grace period short.

The started components form one typed ``Runtime`` (``runtime.py``), built here once in that
order and handed to the RPC methods (``methods/``), the read-side views (``views.py``: status,
health, limits, breaker views, durable flush, peer checks) and reload (``reload.py``, on
SIGHUP: a bad config keeps the old one; a good one applies without dropping in-flight work).

Also here: one daemon per store (an ``flock`` on ``kiln.lock`` and one on the store directory
itself, so deleting ``kiln.lock`` lets no second daemon in), the listening socket (systemd's if
socket-activated, else bound and removed on exit), and the watchdog, which follows
the health monitor's snapshot (``actors/health.py``): ``WATCHDOG=1`` only while every actor runs
and answers its liveness ask, the storage writer makes progress and the snapshot is fresh;
``STATUS=`` is the snapshot's summary.

Start-up failures end the process with one line and exit 1, never a traceback:
``daemon.start_failed`` (the state directory or the socket cannot be used, another daemon holds
the store, the config or a credential is unusable), ``storage.damaged`` (the store failed its
integrity check: docs/operations.md, "A damaged store") or ``storage.open_failed``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Final

import trio

from claykiln.actors.health_checks import WRITER_STALLED
from claykiln.daemon import sdnotify, views
from claykiln.daemon.config import ConfigError, load_config
from claykiln.daemon.config.credentials import CredentialError, CredentialStore
from claykiln.daemon.config.types import KilnConfig
from claykiln.daemon.logs import alert, configure_logging, get_logger
from claykiln.daemon.malloc import pin_mmap_threshold
from claykiln.daemon.methods import build_methods
from claykiln.daemon.reload import reload_config
from claykiln.daemon.rpc.listener import SocketInUse, adopt_listener, bind_unix_listener
from claykiln.daemon.rpc.server import Server
from claykiln.daemon.runtime import (
    Runtime,
    load_credentials,
)
from claykiln.daemon.start import server_limits, start_runtime
from claykiln.storage import StorageError, Store, StoreDamaged

__all__ = ["Daemon", "kiln_version", "run_daemon"]

log = get_logger("claykiln.daemon")

STORE_DIRNAME: Final = "store"
LOCK_NAME: Final = "kiln.lock"
# The watchdog withholds WATCHDOG=1 when the health snapshot is older than this many of the
# monitor's intervals (the monitor itself is stuck).
STALE_HEALTH_INTERVALS: Final = 5
# Worst-case stop: grace_period (20 s) + reply flush (5 s) + this, inside TimeoutStopSec=45s.
STORAGE_FLUSH_TIMEOUT: Final = 10.0


def kiln_version() -> str:
    """The installed claykiln's version (``0+unknown`` from a bare checkout)."""
    try:
        return version("claykiln")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


class StateDirBusy(Exception):
    """Another daemon holds the state directory's lock."""


class StartFailed(Exception):
    """Something the daemon needs at start cannot be used (the state directory, the socket
    path); the message names it, says why and how to fix it."""


class Daemon:
    """One running claykiln process. ``run`` returns when it has stopped cleanly.

    Holds only the lifecycle's own state (the config it was started with, the config loader a
    reload uses, the lock and the socket); the started components live in the ``Runtime`` that
    ``start_runtime`` builds and ``_start`` hands to the methods, the views and reload.
    """

    def __init__(
        self,
        config: KilnConfig,
        *,
        config_path: Path | None = None,
        overrides: dict[str, Path | None] | None = None,
        listener: trio.socket.SocketType | None = None,
        mmap_threshold: int | None = None,
    ) -> None:
        overrides = overrides or {}
        self._mmap_threshold = mmap_threshold  # pinned by run_daemon (daemon/malloc.py)
        self._config = config  # the config at start; after it, the running one is runtime.config
        self._load_config = partial(
            load_config,
            config_path,
            socket=overrides.get("socket"),
            state_dir=overrides.get("state_dir"),
        )
        self.version = kiln_version()
        self.started_at = time.monotonic()
        self._listener = listener
        self._bound_socket: Path | None = None
        self._lock_fds: list[int] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self._config
        d = config.daemon
        credentials = load_credentials(config)
        self._lock_state_dir(d.state_dir)
        store = await trio.to_thread.run_sync(
            partial(
                Store.open,
                d.state_dir / STORE_DIRNAME,
                map_size=d.storage.map_size,
                max_map_size=d.storage.max_map_size,
                sync=d.storage.sync,
            )
        )
        log.info(
            "daemon.started",
            version=self.version,
            pid=os.getpid(),
            config=config.source,
            state_dir=str(d.state_dir),
            boot=store.meta.boot_count,
            store_checked_s=store.meta.integrity_seconds,
            malloc_mmap_threshold=self._mmap_threshold,
        )
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async with trio.open_nursery() as root:
                    runtime, server = await self._start(root, store, credentials)
                    # Everything made so far (modules, config, actors) lives as long as the
                    # process: move it out of the collector's reach, so a full collection
                    # scans only what requests create (paced p99 0.8-1.2 ms -> 0.26-0.34 ms).
                    views.freeze_heap()
                    task_status.started()
                    sdnotify.ready(status=f"serving on {runtime.socket}")
                    log.info("daemon.ready", socket=str(runtime.socket))
                    root.start_soon(self._watchdog, runtime)
                    await self._wait_for_stop(runtime, sigs)
                    await self._stop(root, runtime, server, sigs)
        finally:
            store.close()
            self._remove_socket()
            self._unlock()
            log.info("daemon.stopped")

    async def _start(
        self, root: trio.Nursery, store: Store, credentials: CredentialStore
    ) -> tuple[Runtime, Server]:
        """The components (``start_runtime``), then the server on the socket."""
        runtime = await start_runtime(
            root,
            self._config,
            credentials,
            store,
            version=self.version,
            started_at=self.started_at,
        )
        listener, runtime.socket = self._open_listener(runtime.config)
        server = Server(
            build_methods(runtime),
            server_limits(runtime.config),
            is_admin=partial(views.is_admin, runtime),
            is_allowed=partial(views.is_allowed, runtime),
            counters=runtime.server,
        )
        await root.start(server.serve, listener)
        return runtime, server

    def _open_listener(self, config: KilnConfig) -> tuple[trio.socket.SocketType, Path]:
        """The listening socket and its path: the one given, systemd's, or one bound here."""
        if self._listener is not None:
            return self._listener, config.daemon.socket
        inherited = sdnotify.listen_fds()
        if inherited:
            serving = config.daemon.socket
            name = inherited[0].getsockname()
            if isinstance(name, str) and name:
                serving = Path(name)
            log.info("daemon.socket_activated", fds=len(inherited), socket=str(serving))
            return adopt_listener(inherited[0]), serving
        path = config.daemon.socket
        try:
            listener = bind_unix_listener(path, config.daemon.socket_mode)
        except OSError as exc:
            msg = (
                f"cannot listen on the socket {path}: {exc.strerror or exc}; its directory must "
                "exist (or be creatable) and be writable by the daemon's user, and the path "
                "must be under 108 bytes (RuntimeDirectory= under systemd, or --socket)"
            )
            raise StartFailed(msg) from None
        self._bound_socket = path
        return listener, path

    async def _wait_for_stop(self, runtime: Runtime, sigs: AsyncIterator[int]) -> None:
        async for signum in sigs:
            if signum == signal.SIGHUP:
                await reload_config(runtime, self._load_config)
                continue
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            return

    async def _stop(
        self, root: trio.Nursery, runtime: Runtime, server: Server, sigs: AsyncIterator[int]
    ) -> None:
        sdnotify.stopping()
        grace = runtime.config.daemon.grace_period
        async with trio.open_nursery() as stopper:
            # A second SIGTERM/SIGINT during the drain cuts the grace period short.
            async def hurry() -> None:
                async for signum in sigs:
                    if signum != signal.SIGHUP:
                        log.warning("daemon.drain_cut_short", signal=signal.Signals(signum).name)
                        server.cut_drain_short()
                        return

            stopper.start_soon(hurry)
            jobs_drained: list[bool] = []

            async def drain_jobs() -> None:
                # A job still in flight past the grace period stays in_flight on disk: the
                # next start treats it as in doubt.
                jobs_drained.append(await runtime.scheduler.drain(grace))

            async with trio.open_nursery() as drains:
                drains.start_soon(drain_jobs)
                drained = await server.drain(grace)
            stopper.cancel_scope.cancel()
        log.info(
            "daemon.drained", complete=drained, jobs_complete=all(jobs_drained), grace_period=grace
        )
        with trio.move_on_after(STORAGE_FLUSH_TIMEOUT) as flush:
            flush.shield = True
            await runtime.writer.aclose()
        if flush.cancelled_caught:
            log.error("daemon.flush_timeout")
        root.cancel_scope.cancel()

    def _lock_state_dir(self, state_dir: Path) -> None:
        """One daemon per store: a second one would be a second writer of the same records.

        Makes the state and store directories (0700) and holds two flocks for the life of the
        process (the kernel releases them when it dies): ``kiln.lock``, and the store directory
        itself, which no file deletion can take away. Raises StateDirBusy if another process
        holds either, StartFailed if the directories cannot be made or used.
        """
        store_dir = state_dir / STORE_DIRNAME
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            store_dir.mkdir(mode=0o700, exist_ok=True)
            self._lock_fds.append(
                os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            )
            self._lock_fds.append(os.open(store_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as exc:
            self._unlock()
            raise StartFailed(_state_dir_problem(state_dir, exc)) from None
        for fd, what in zip(self._lock_fds, (LOCK_NAME, "the store directory"), strict=True):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._unlock()
                msg = (
                    f"another kiln daemon is using the state directory {state_dir} (it holds "
                    f"{what}); stop it first or give this one another --state-dir"
                )
                raise StateDirBusy(msg) from None

    def _unlock(self) -> None:
        while self._lock_fds:
            os.close(self._lock_fds.pop())

    def _remove_socket(self) -> None:
        if self._bound_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self._bound_socket.unlink()

    async def _watchdog(self, runtime: Runtime) -> None:
        """Ping WATCHDOG=1 while the health monitor's snapshot is fresh and names nothing a
        restart would fix (an actor stopped or silent to its liveness ask, the storage writer
        stalled); an unhealthy upstream does not stop it (a restart cannot fix Clay). STATUS=
        carries the snapshot's summary either way."""
        interval = sdnotify.watchdog_interval()
        period = interval / 2 if interval else 5.0
        while True:
            await trio.sleep(period)
            snapshot = runtime.health.snapshot
            age = trio.current_time() - snapshot.at
            limit = max(STALE_HEALTH_INTERVALS * runtime.config.daemon.health.interval, period)
            dead = [name for name in snapshot.stuck if name != WRITER_STALLED]
            if age > limit:
                dead.append(f"health (no evaluation for {age:.0f} s)")
            stuck_writer = WRITER_STALLED in snapshot.stuck
            connections = runtime.server.connections
            if dead or stuck_writer:
                alert(
                    log,
                    "watchdog.missed",
                    severity="critical",
                    level="error",
                    dead=dead,
                    stuck_writer=stuck_writer,
                )
                withheld = ", ".join([*dead, *([WRITER_STALLED] if stuck_writer else [])])
                sdnotify.status(f"{snapshot.summary()}; watchdog withheld: {withheld}")
                continue
            if interval:
                sdnotify.watchdog()
            sdnotify.status(f"{snapshot.summary()}; {connections} connection(s)")


def run_daemon(
    config: KilnConfig, *, config_path: Path | None, overrides: dict[str, Path | None]
) -> int:
    """``kiln serve``: configure logging, run until stopped, return the exit code."""
    d = config.daemon
    configure_logging(fmt=d.log_format, level=d.log_level, secrets=d.secrets)
    pinned = pin_mmap_threshold()
    daemon = Daemon(config, config_path=config_path, overrides=overrides, mmap_threshold=pinned)
    try:
        trio.run(daemon.run)
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, StoreDamaged):
            alert(
                log,
                "storage.damaged",
                severity="critical",
                path=str(leaf.path),
                check=leaf.check,
                detail=leaf.detail,
                error=str(leaf),
            )
            return 1
        if isinstance(leaf, StorageError):
            alert(log, "storage.open_failed", severity="critical", error=str(leaf))
            return 1
        if isinstance(
            leaf, StateDirBusy | StartFailed | SocketInUse | ConfigError | CredentialError
        ):
            log.error("daemon.start_failed", error=str(leaf))
            return 1
        raise
    return 0


def _state_dir_problem(state_dir: Path, exc: OSError) -> str:
    """What is wrong with ``state_dir`` (from the OSError making or locking it) and the fix."""
    where = exc.filename or state_dir
    if isinstance(exc, FileExistsError | NotADirectoryError):
        why = f"{where} exists but is not a directory"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = f"{where} cannot be written ({exc.strerror})"
    else:
        why = f"{where}: {exc.strerror or exc}"
    return (
        f"cannot use the state directory {state_dir}: {why}; it must be a directory the "
        "daemon's user can write (StateDirectory= under systemd, or --state-dir)"
    )


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio wraps nursery errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
