"""``kiln call``: one call through the daemon, printed as JSON."""

from __future__ import annotations

import json
from typing import Any

import click

from claykiln.daemon.cli.common import EXIT_USAGE, fail, pairs, print_json, request

__all__ = ["call"]


@click.command()
@click.argument("operation")
@click.option("--param", "-p", multiple=True, help="Path parameter key=value.")
@click.option("--query", "-q", multiple=True, help="Query parameter key=value.")
@click.option("--header", "-H", multiple=True, help="Extra header key=value.")
@click.option("--json", "json_body", help="JSON request body.")
@click.option("--lane", help="Lane override.")
@click.option("--deadline-ms", type=int, help="Deadline for the whole call.")
@click.option("--idempotency-key", help="Idempotency key.")
@click.pass_context
def call(
    ctx: click.Context,
    operation: str,
    param: tuple[str, ...],
    query: tuple[str, ...],
    header: tuple[str, ...],
    json_body: str | None,
    lane: str | None,
    deadline_ms: int | None,
    idempotency_key: str | None,
) -> None:
    """Make one call through the daemon and print the result as JSON."""
    args: dict[str, Any] = {"operation": operation}
    if param:
        args["path_params"] = pairs(param, "--param")
    if query:
        args["query"] = pairs(query, "--query")
    if header:
        args["headers"] = pairs(header, "--header")
    if json_body is not None:
        try:
            args["json"] = json.loads(json_body)
        except ValueError as exc:
            fail(f"--json is not valid JSON: {exc}", EXIT_USAGE)
    if lane:
        args["lane"] = lane
    if deadline_ms is not None:
        args["deadline_ms"] = deadline_ms
    if idempotency_key:
        args["idempotency_key"] = idempotency_key
    timeout = (deadline_ms / 1000 + 5) if deadline_ms else 600.0
    print_json(request(ctx, "call", args, timeout=timeout))
