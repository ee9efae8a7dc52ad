"""The RPC methods: argument validation at the edge, then a hand-off to the actors.

Every method checks its named arguments strictly (unknown names are refused with
``bad_request`` naming them) so a typo never silently changes behavior.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import trio

from claykiln.actors.call import CallRequest
from claykiln.actors.errors import BadRequestRefusal
from claykiln.actors.upstream import NO_JSON
from claykiln.daemon.rpc.protocol import PROTOCOL_VERSION
from claykiln.daemon.rpc.types import Method, RequestContext

if TYPE_CHECKING:
    from claykiln.daemon.app import Daemon

__all__ = ["build_methods", "parse_call"]

CALL_ARGS: Final = frozenset(
    {
        "operation",
        "path_params",
        "query",
        "json",
        "body",
        "headers",
        "lane",
        "deadline_ms",
        "idempotency_key",
    }
)
MAX_DEADLINE_MS: Final = 24 * 3600 * 1000
FORCE_STATES: Final = ("open", "closed", "disabled", "reset")


def _check_names(method: str, args: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        allowed_text = ", ".join(sorted(allowed)) or "(none)"
        msg = f"{method}: unknown argument(s) {', '.join(unknown)}; allowed: {allowed_text}"
        raise BadRequestRefusal(msg)


def _str_map(method: str, name: str, value: Any, *, scalars: bool = False) -> dict[str, Any]:
    if value is None:
        return {}
    allowed = (str, int, float, bool) if scalars else (str,)
    if not isinstance(value, dict) or any(
        not isinstance(k, str) or not isinstance(v, allowed) for k, v in value.items()
    ):
        kind = "strings, numbers or booleans" if scalars else "strings"
        msg = f"{method}: {name} must be a map of string keys to {kind}"
        raise BadRequestRefusal(msg)
    return dict(value)


def parse_call(args: Mapping[str, Any], now: float) -> CallRequest:
    """Validate ``call`` arguments into a ``CallRequest`` (``deadline_ms`` -> absolute time)."""
    _check_names("call", args, CALL_ARGS)
    operation = args.get("operation")
    if not isinstance(operation, str) or not operation:
        raise BadRequestRefusal(
            "call: operation must be a non-empty string naming a configured operation"
        )
    deadline_ms = args.get("deadline_ms")
    deadline = None
    if deadline_ms is not None:
        if (
            not isinstance(deadline_ms, int | float)
            or isinstance(deadline_ms, bool)
            or not 0 < deadline_ms <= MAX_DEADLINE_MS
        ):
            msg = f"call: deadline_ms must be a number of milliseconds in (0, {MAX_DEADLINE_MS}]"
            raise BadRequestRefusal(msg)
        deadline = now + deadline_ms / 1000
    body = args.get("body")
    if isinstance(body, str):
        body = body.encode()
    if body is not None and not isinstance(body, bytes):
        raise BadRequestRefusal("call: body must be bytes or a string")
    has_json = "json" in args
    if has_json and body is not None:
        raise BadRequestRefusal("call: give json or body, not both")
    lane = args.get("lane")
    if lane is not None and not isinstance(lane, str):
        raise BadRequestRefusal("call: lane must be a string naming a lane")
    key = args.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 255):
        raise BadRequestRefusal("call: idempotency_key must be a string of 1-255 characters")
    query = _str_map("call", "query", args.get("query"), scalars=True)
    return CallRequest(
        operation=operation,
        path_params=_str_map("call", "path_params", args.get("path_params"), scalars=True),
        query={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items()}
        or None,
        json=args["json"] if has_json else NO_JSON,
        body=body,
        headers=_str_map("call", "headers", args.get("headers")),
        lane=lane,
        deadline=deadline,
        idempotency_key=key,
    )


def build_methods(daemon: Daemon) -> dict[str, Method]:
    """The method table the server dispatches on."""
    server_name = f"claykiln {daemon.version}"

    def hello(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            _check_names("hello", args, frozenset())
        return {
            "protocol": PROTOCOL_VERSION,
            "server": server_name,
            "limits": daemon.limits_view(),  # cached: the limits change only on a restart
            "admin": ctx.admin,
        }

    def status(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        _check_names("status", args, frozenset())
        return daemon.status()

    def call_precheck(ctx: RequestContext, args: dict[str, Any]) -> CallRequest:
        request = parse_call(args, trio.current_time())
        daemon.pipeline.fail_fast(request)
        return request

    async def call(ctx: RequestContext, request: CallRequest) -> dict[str, Any]:
        result = await daemon.pipeline.call(request)
        return result.to_wire()

    def breaker_list(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
        _check_names("breaker.list", args, frozenset())
        return daemon.breakers.views()

    async def breaker_force(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        _check_names("breaker.force", args, frozenset({"name", "state"}))
        name, state = args.get("name"), args.get("state")
        if not isinstance(name, str) or not name:
            raise BadRequestRefusal("breaker.force: name must be a breaker key such as 'clay'")
        if state not in FORCE_STATES:
            msg = f"breaker.force: state must be one of {', '.join(FORCE_STATES)}, got {state!r}"
            raise BadRequestRefusal(msg)
        known = daemon.breaker_keys()
        if name not in known:
            msg = f"breaker.force: no breaker {name!r}; known: {', '.join(sorted(known))}"
            raise BadRequestRefusal(msg)
        mark = daemon.storage_mark()
        view = await daemon.breakers.force(name, state)
        # The board persists the transition with write_nowait; an empty write is a flush
        # barrier, so the reply means "on disk" (a kill -9 right after it keeps the state).
        await daemon.durable_flush(mark)
        return daemon.breaker_view(name, view)

    return {
        "hello": Method("hello", inline=hello),
        "status": Method("status", inline=status),
        "call": Method("call", handler=call, precheck=call_precheck),
        "breaker.list": Method("breaker.list", inline=breaker_list),
        "breaker.force": Method("breaker.force", handler=breaker_force, admin=True),
    }
