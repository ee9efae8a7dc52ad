"""The RPC method table: one module per method family, merged here.

Each family is a module with one function ``methods(runtime: Runtime) -> list[Method]`` that
checks its arguments at the edge (``args.py``: strict names, typed maps) and hands the work to
the components in ``runtime`` (``claykiln.daemon.runtime``); read-side answers come from
``claykiln.daemon.views``. Families: ``core`` (hello, status), ``call`` (call), ``breaker``
(breaker.list, breaker.force), ``idempotency`` (idempotency.get, idempotency.forget), ``cache``
(cache.list, cache.purge), ``jobs`` (submit, submit_many, jobs.get, jobs.list), ``dlq``
(dlq.list, dlq.get, dlq.export, dlq.retry, dlq.kill, dlq.purge), ``quota`` (quota.list,
quota.release), ``subscribe`` (subscribe, unsubscribe), ``metrics`` (metrics).

To add a family: write ``methods/<family>.py`` with its ``methods(runtime)`` and add one line to
``FAMILIES`` below. Two families naming the same method is a programming error, raised at start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from claykiln.daemon.methods import (
    breaker,
    cache,
    call,
    core,
    dlq,
    idempotency,
    jobs,
    metrics,
    quota,
    subscribe,
)
from claykiln.daemon.rpc.types import Method
from claykiln.daemon.runtime import Runtime

__all__ = ["FAMILIES", "build_methods"]

Family = Callable[[Runtime], list[Method]]

FAMILIES: Final[tuple[Family, ...]] = (
    core.methods,
    call.methods,
    breaker.methods,
    idempotency.methods,
    cache.methods,
    jobs.methods,
    dlq.methods,
    quota.methods,
    subscribe.methods,
    metrics.methods,
)


def build_methods(runtime: Runtime) -> dict[str, Method]:
    """The method table the server dispatches on: every family's methods, by name.

    Raises ``ValueError`` when two families register the same method name.
    """
    table: dict[str, Method] = {}
    for family in FAMILIES:
        for method in family(runtime):
            if method.name in table:
                msg = f"method {method.name!r} is registered twice; rename one in methods/"
                raise ValueError(msg)
            table[method.name] = method
    return table
