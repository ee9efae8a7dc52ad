"""The started components of one daemon process, typed, and the helpers start and reload share.

``Runtime`` is built once by the lifecycle (``start.py``: ``start_runtime``), in dependency order,
after every actor it names is running; the RPC methods (``methods/``), the views (``views.py``)
and reload (``reload.py``) receive it and hold nothing else of the process. Every field is set
once (``socket`` when the listener opens), except what a reload changes in place: ``config`` and
``credentials`` are replaced and ``pools`` gains the pools of upstreams the reload adds.

Also here, because both the start and a reload need them:
- ``ActorRoster``: starts actors in the root nursery and knows whether each one runs.
- ``StoredRecords``: an actor's persisted records in one storage table (the ``persist`` and
  ``load`` callbacks the breaker and gate boards take).
- ``load_credentials``, ``start_pools``, ``routes``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs
import trio

from claykiln.actors.breaker import BreakerBoard
from claykiln.actors.dlq import DeadLetters
from claykiln.actors.fallback import FallbackCache
from claykiln.actors.figures import CallFigures, MonotonicCounters
from claykiln.actors.gate import GateBoard
from claykiln.actors.health import HealthMonitor
from claykiln.actors.idempotency import IdempotencyStore
from claykiln.actors.jobs_store import JobStore
from claykiln.actors.keyed_call import KeyedCalls
from claykiln.actors.lanes import Lanes
from claykiln.actors.outbox import Outbox
from claykiln.actors.pipeline import CallPipeline, UpstreamRoute
from claykiln.actors.scheduler import Scheduler
from claykiln.actors.upstream import UpstreamPool
from claykiln.actors.writer import Writer
from claykiln.daemon import wiring
from claykiln.daemon.config.credentials import CredentialStore
from claykiln.daemon.config.types import KilnConfig
from claykiln.daemon.events import EventHub
from claykiln.daemon.logs import get_logger, set_secrets
from claykiln.daemon.rpc.dispatch import ServerCounters
from claykiln.storage import Put, StorageError, Store, text_key

__all__ = [
    "ActorRoster",
    "ActorRun",
    "ActorState",
    "Runtime",
    "StoredRecords",
    "load_credentials",
    "routes",
    "start_pools",
]

log = get_logger("claykiln.daemon")  # start and reload events are the daemon's events

ActorState = Literal["starting", "running", "stopped"]


class ActorRun(Protocol):
    """An actor's ``run``: calls ``task_status.started()`` once ready, returns when stopped."""

    def __call__(self, *, task_status: trio.TaskStatus[None] = ...) -> Awaitable[None]: ...


@attrs.define(eq=False)
class ActorRoster:
    """The actors running in the root nursery, by name, and the state of each.

    ``states`` is what the watchdog and ``health`` read: an actor is ``running`` from the moment
    its ``run`` reported ready until it returns or raises, then ``stopped``; an actor ``retire``
    stopped is no longer listed.
    """

    nursery: trio.Nursery
    states: dict[str, ActorState] = attrs.Factory(dict)
    _scopes: dict[str, trio.CancelScope] = attrs.Factory(dict)

    def retire(self, name: str) -> None:
        """Stop actor ``name`` (cancel its ``run``) and stop listing it: the pool of an upstream
        a reload removed. A later ``start`` under the same name is a new actor."""
        scope = self._scopes.pop(name, None)
        self.states.pop(name, None)
        if scope is not None:
            scope.cancel()

    async def start(self, name: str, run: ActorRun) -> None:
        """Start ``run`` as actor ``name`` and return once it is ready; raises what it raises
        before it is ready."""
        self.states[name] = "starting"
        await self.nursery.start(self._supervised, name, run)
        self.states[name] = "running"

    async def _supervised(
        self,
        name: str,
        run: ActorRun,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            self._scopes[name] = scope
            try:
                await run(task_status=task_status)
            finally:
                if self._scopes.get(name) is scope:  # not retired, nor started anew
                    del self._scopes[name]
                    self.states[name] = "stopped"


@attrs.frozen
class StoredRecords:
    """An actor's records in one storage table, keyed by text.

    ``persist`` queues a put with the writer and returns at once (fire-and-forget; raises
    ``StorageError`` when the writer's inbox is full, so nothing is lost silently). ``load``
    reads on the calling thread and answers None for a missing or non-map value.
    """

    store: Store
    writer: Writer
    table: str

    def persist(self, key: str, record: dict[str, Any], /) -> None:
        if not self.writer.write_nowait([Put(self.table, text_key(key), record)]):
            msg = f"the storage writer's inbox is full; {self.table}/{key} not persisted"
            raise StorageError(msg)

    def load(self, key: str, /) -> dict[str, Any] | None:
        value = self.store.get(self.table, text_key(key))
        return value if isinstance(value, dict) else None


@attrs.define(eq=False)
class Runtime:
    """The components of a started daemon; see the module docstring for who changes what."""

    config: KilnConfig  # the running config: a reload replaces it
    credentials: CredentialStore  # a reload replaces it
    store: Store
    writer: Writer
    breakers: BreakerBoard
    gate: GateBoard
    lanes: Lanes
    pools: dict[str, UpstreamPool]  # one per upstream; a reload adds new upstreams' pools
    pipeline: CallPipeline
    idempotency: IdempotencyStore
    cache: FallbackCache
    calls: KeyedCalls  # ``call``: idempotency and fallback around the pipeline
    jobs: JobStore  # the durable outbox's tables
    outbox: Outbox  # ``submit``: jobs checked, then written durably
    scheduler: Scheduler  # runs due jobs through the pipeline
    dlq: DeadLetters  # the dead-letter queue's methods
    health: HealthMonitor  # its snapshot: status, the watchdog, STATUS=
    actors: ActorRoster
    server: ServerCounters
    version: str
    started_at: float  # time.monotonic() when the process began
    # The socket served on (systemd's when socket-activated): set by the lifecycle when it
    # opens the listener, the configured path before that.
    socket: Path
    # What kiln top and the metrics read: the event hub (``subscribe``), the ``call`` method's
    # counts, and the floors that keep exported counters going up across a reload.
    events: EventHub = attrs.Factory(EventHub)
    call_figures: CallFigures = attrs.Factory(CallFigures)
    metric_counters: MonotonicCounters = attrs.Factory(MonotonicCounters)


def load_credentials(config: KilnConfig) -> CredentialStore:
    """The credentials ``config`` names (at start and on reload); also updates the redaction
    list. Missing files are logged; an unreadable one raises ``CredentialError``."""
    names = wiring.credential_names(config)
    creds = CredentialStore.load(names, config.daemon.credentials_dir)
    for name in sorted(names):
        if creds.get(name) is None:
            log.warning(
                "upstream.credentials_missing",
                name=name,
                directory=str(config.daemon.credentials_dir),
                hint="calls using it go out without auth and will likely get 401",
            )
    set_secrets([*config.daemon.secrets, *creds.secrets()])
    return creds


async def start_pools(
    actors: ActorRoster,
    pools: dict[str, UpstreamPool],
    config: KilnConfig,
    credentials: CredentialStore,
) -> None:
    """Start one pool per upstream of ``config`` not in ``pools`` yet and add it there (at start,
    and for the upstreams a reload adds)."""
    for name, settings in wiring.upstream_settings(config, credentials).items():
        if name not in pools:
            pool = UpstreamPool(settings)
            await actors.start(f"upstream.{name}", pool.run)
            pools[name] = pool


def routes(pools: dict[str, UpstreamPool], config: KilnConfig) -> dict[str, UpstreamRoute]:
    """The pipeline's routes for ``config``: its upstreams whose pool is running."""
    return {
        name: UpstreamRoute(pools[name], up.retry)
        for name, up in config.upstreams.items()
        if name in pools
    }
