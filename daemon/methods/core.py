"""The core methods: ``hello`` (protocol version, server, limits, admin, what is safe to resend)
and ``status``.

``hello``'s ``repeat_safe`` tells clients what they may send again after a lost connection
(docs/protocol.md, "Resending"): the methods that only read or set a state (``READ_METHODS``,
those this daemon has) and the operations configured ``repeat_safe`` (read per request, so a
reload shows; the list is cached per config object).
"""

from __future__ import annotations

from typing import Any

from claykiln.daemon import views
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.rpc.protocol import PROTOCOL_VERSION
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["methods"]

NO_ARGS = frozenset[str]()
# Methods that only read, or set a state that setting again leaves the same.
READ_METHODS = frozenset(
    {
        "hello",
        "status",
        "breaker.list",
        "breaker.force",
        "idempotency.get",
        "cache.list",
        "jobs.get",
        "jobs.list",
        "dlq.list",
        "dlq.get",
        "dlq.export",
        "quota.list",
        "metrics",
    }
)


def methods(runtime: Runtime) -> list[Method]:
    """``hello`` and ``status``, both answered inline on the connection's reader."""
    server_name = f"claykiln {runtime.version}"
    # The limits are restart-only (a reload keeps them), so hello's answer is computed once.
    limits = views.limits_view(runtime.config)

    safe_for: list[Any] = [None, None]  # [config, its repeat_safe map]

    def repeat_safe() -> dict[str, list[str]]:
        config = runtime.config
        if safe_for[0] is not config:
            safe_for[0] = config
            safe_for[1] = {
                "methods": sorted(READ_METHODS),
                "operations": sorted(n for n, op in config.operations.items() if op.repeat_safe),
            }
        cached: dict[str, list[str]] = safe_for[1]
        return cached

    def hello(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            check_names("hello", args, NO_ARGS)
        return {
            "protocol": PROTOCOL_VERSION,
            "server": server_name,
            "limits": limits,
            "admin": ctx.admin,
            "repeat_safe": repeat_safe(),
        }

    def status(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("status", args, NO_ARGS)
        return views.status(runtime)

    # status is shared: computed at most once per [daemon.limits] status_max_age for everyone.
    return [Method("hello", inline=hello), Method("status", inline=status, shared=True)]
