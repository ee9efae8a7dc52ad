"""The core methods: ``hello`` (protocol version, server, limits, admin) and ``status``."""

from __future__ import annotations

from typing import Any

from claykiln.daemon import views
from claykiln.daemon.methods.args import check_names
from claykiln.daemon.rpc.protocol import PROTOCOL_VERSION
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["methods"]

NO_ARGS = frozenset[str]()


def methods(runtime: Runtime) -> list[Method]:
    """``hello`` and ``status``, both answered inline on the connection's reader."""
    server_name = f"claykiln {runtime.version}"
    # The limits are restart-only (a reload keeps them), so hello's answer is computed once.
    limits = views.limits_view(runtime.config)

    def hello(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            check_names("hello", args, NO_ARGS)
        return {
            "protocol": PROTOCOL_VERSION,
            "server": server_name,
            "limits": limits,
            "admin": ctx.admin,
        }

    def status(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("status", args, NO_ARGS)
        return views.status(runtime)

    return [Method("hello", inline=hello), Method("status", inline=status)]
