"""Starting the daemon's components: the actors in dependency order, built into a ``Runtime``.

``start_runtime`` is the one place that knows the start order (a new actor is started here and
gets a field in ``daemon/runtime.py``); ``server_limits`` turns ``[daemon.limits]`` into what
the RPC server enforces. The lifecycle around it (lock, store, signals, drain) is ``app.py``.
"""

from __future__ import annotations

from functools import partial

import trio

from claykiln.actors.breaker import BreakerBoard
from claykiln.actors.breaker_types import BreakerPolicy
from claykiln.actors.dlq import DeadLetters
from claykiln.actors.fallback import FallbackCache
from claykiln.actors.gate import GateBoard
from claykiln.actors.idempotency import IdempotencyStore
from claykiln.actors.jobs_store import JobStore
from claykiln.actors.keyed_call import KeyedCalls
from claykiln.actors.lanes import Lanes
from claykiln.actors.outbox import Outbox
from claykiln.actors.pipeline import CallPipeline
from claykiln.actors.scheduler import Scheduler
from claykiln.actors.upstream import UpstreamPool
from claykiln.actors.writer import Writer
from claykiln.daemon import wiring
from claykiln.daemon.config.credentials import CredentialStore
from claykiln.daemon.config.types import KilnConfig
from claykiln.daemon.health import health_monitor, start_health
from claykiln.daemon.metrics_textfile import run_textfile
from claykiln.daemon.rpc.dispatch import ServerCounters
from claykiln.daemon.rpc.protocol import Limits
from claykiln.daemon.rpc.server import ServerLimits
from claykiln.daemon.runtime import (
    ActorRoster,
    Runtime,
    StoredRecords,
    routes,
    start_pools,
)
from claykiln.daemon.ticks import RuntimeTicks
from claykiln.storage import Store

__all__ = ["server_limits", "start_runtime"]


def server_limits(config: KilnConfig) -> ServerLimits:
    lim = config.daemon.limits
    return ServerLimits(
        protocol=Limits(
            max_frame=lim.max_frame,
            max_array_len=lim.max_array_len,
            max_map_len=lim.max_map_len,
            max_depth=lim.max_depth,
            max_containers=lim.max_containers,
        ),
        max_connections=lim.max_connections,
        max_connections_per_uid=lim.max_connections_per_uid,
        max_in_flight=lim.max_in_flight,
        idle_timeout=lim.idle_timeout,
        frame_timeout=lim.frame_timeout,
        reply_timeout=lim.reply_timeout,
        max_reply_backlog=lim.max_reply_backlog,
        shared_answer_age=lim.status_max_age,
        share_window=lim.share_window,
        busy_poll=lim.busy_poll,
    )


async def start_runtime(
    root: trio.Nursery,
    config: KilnConfig,
    credentials: CredentialStore,
    store: Store,
    *,
    version: str,
    started_at: float,
) -> Runtime:
    """Start the actors in ``root`` in dependency order (writer -> idempotency, cache ->
    breakers, gate, lanes -> upstream pools -> call pipeline -> scheduler -> health monitor)
    and return them as a ``Runtime``, every actor running.

    ``runtime.socket`` is the configured path until the lifecycle opens the listener.
    Raises what an actor raises before it is ready (the actors started so far keep running in
    ``root``: cancel it to stop them).
    """
    actors = ActorRoster(root)
    writer = Writer(store)
    await actors.start("writer", writer.run)
    idempotency = IdempotencyStore(store, writer)
    await actors.start("idempotency", idempotency.run)
    cache = FallbackCache(store, writer, config.daemon.cache)
    await actors.start("cache", cache.run)
    breaker_records = StoredRecords(store, writer, "breakers")
    breakers = BreakerBoard(
        wiring.breaker_policies(config),
        BreakerPolicy(),
        persist=breaker_records.persist,
        load=breaker_records.load,
    )
    await actors.start("breakers", breakers.run)
    gate_records = StoredRecords(store, writer, "gate")
    gate = GateBoard(
        wiring.rate_policies(config),
        persist=gate_records.persist,
        load=gate_records.load,
    )
    await actors.start("gate", gate.run)
    lanes = Lanes(wiring.lane_policies(config))
    await actors.start("lanes", lanes.run)
    pools: dict[str, UpstreamPool] = {}
    await start_pools(actors, pools, config, credentials)
    pipeline = CallPipeline(
        wiring.operations(config, credentials),
        routes(pools, config),
        lanes=lanes,
        breakers=breakers,
        gate=gate,
    )
    calls = KeyedCalls(pipeline, idempotency, cache, wiring.call_guards(config))
    # The outbox reads the running config (a reload applies to the next job); ``runtime`` is
    # bound below, before the scheduler starts and before any method runs.
    outbox_settings = wiring.outbox_settings_of(lambda: runtime.config)
    jobs = JobStore(store, writer)
    scheduler = Scheduler(jobs, pipeline, outbox_settings)
    runtime = Runtime(
        config=config,
        credentials=credentials,
        store=store,
        writer=writer,
        breakers=breakers,
        gate=gate,
        lanes=lanes,
        pools=pools,
        pipeline=pipeline,
        idempotency=idempotency,
        cache=cache,
        calls=calls,
        jobs=jobs,
        outbox=Outbox(
            jobs,
            pipeline,
            outbox_settings,
            scheduler.job_due,
            held=scheduler.is_held,
            counted=scheduler.row_counted,
        ),
        scheduler=scheduler,
        dlq=DeadLetters(jobs, outbox_settings, scheduler.job_due),
        health=health_monitor(lambda: runtime),
        actors=actors,
        server=ServerCounters(),
        version=version,
        started_at=started_at,
        socket=config.daemon.socket,
    )
    # Jobs left in flight by an earlier boot are settled (in doubt) before READY.
    await actors.start("scheduler", scheduler.run)
    await start_health(runtime)  # after every actor it watches
    # What watches the daemon (kiln top, metrics): it reads every other component.
    ticks = RuntimeTicks(runtime)
    tick_interval = lambda: runtime.config.daemon.tick_interval  # noqa: E731  (a reload)
    await actors.start("events", partial(runtime.events.run, ticks, tick_interval))
    await actors.start("metrics", partial(run_textfile, runtime))
    return runtime
