"""``kiln call``: one call through the daemon, printed as JSON.

Exit status (CONTRACT, docs/operations.md), httpie's ``--check-status`` codes: 0 for an
answer below 400; 4 for a 4xx answer and 5 for a 5xx answer (the result, or the daemon's
``upstream_error`` carrying the status its retries ended on), with a line on stderr saying so;
``--no-check-status`` exits 0 for every result the daemon returns (curl without ``--fail``;
a 5xx the retries ended on is still the daemon's ``upstream_error``, exit 1).
The daemon's own refusals exit 1, usage errors 2, no daemon 3 (``common.py``). A 401 or 403
for an operation whose credential file is missing (the result's ``credential_missing``) adds a
hint naming the file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from claykiln.daemon.cli.common import (
    EXIT_CLIENT_ERROR,
    EXIT_REFUSED,
    EXIT_SERVER_ERROR,
    call_args,
    print_json,
    request,
)
from claykiln.daemon.client import KilnError

__all__ = ["answer_status", "call"]


def answer_status(status: int) -> int:
    """The exit status for an upstream answer ``status`` under ``--check-status``."""
    if 400 <= status < 500:
        return EXIT_CLIENT_ERROR
    if status >= 500:
        return EXIT_SERVER_ERROR
    return 0


def _credential_hint(missing: Any) -> str:
    """The stderr hint for a result's ``credential_missing`` map (docs/protocol.md)."""
    if not isinstance(missing, dict):
        return ""
    name, path = missing.get("credential"), missing.get("path")
    return (
        f"\nkiln: hint: the daemon sent no {missing.get('header')} header: its credential file "
        f"{path} does not exist. Put the {name} secret there (one line) and restart the daemon "
        "(or reload it with SIGHUP); under systemd, /etc/claykiln/credentials/"
        f"{name} and `systemctl restart kiln` (docs/operations.md, Credentials)"
    )


@click.command()
@click.argument("operation")
@click.option("--param", "-p", multiple=True, help="Path parameter key=value.")
@click.option("--query", "-q", multiple=True, help="Query parameter key=value.")
@click.option("--header", "-H", multiple=True, help='Extra header "Name: value" (or name=value).')
@click.option("--json", "json_body", help="JSON request body.")
@click.option("--lane", help="Lane override.")
@click.option("--deadline-ms", type=int, help="Deadline for the whole call.")
@click.option("--idempotency-key", help="Idempotency key.")
@click.option(
    "--check-status/--no-check-status",
    default=True,
    show_default=True,
    help="Exit 4 for a 4xx answer and 5 for a 5xx answer (httpie's codes); off: 0 for any answer.",
)
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
    check_status: bool,
) -> None:
    """Make one call through the daemon and print the result as JSON."""
    args = call_args(
        operation,
        param=param,
        query=query,
        header=header,
        json_body=json_body,
        lane=lane,
        deadline_ms=deadline_ms,
        idempotency_key=idempotency_key,
    )
    timeout = (deadline_ms / 1000 + 5) if deadline_ms else 600.0
    result = request(ctx, "call", args, timeout=timeout, refusal_exit=_refusal_exit(check_status))
    print_json(result)
    status = result.get("status") if isinstance(result, dict) else None
    code = answer_status(status) if isinstance(status, int) and check_status else 0
    hint = _credential_hint(result.get("credential_missing")) if status in (401, 403) else ""
    if code or hint:
        click.echo(f"kiln: {operation}: the upstream answered {status}{hint}", err=True)
    sys.exit(code)


def _refusal_exit(check_status: bool) -> Callable[[KilnError], int]:
    """Exit 5 for an ``upstream_error`` whose details carry a 5xx status (the answer the
    daemon's retries ended on) under ``--check-status``; 1 for every other refusal."""

    def exit_code(exc: KilnError) -> int:
        status = exc.details.get("status")
        if check_status and exc.code == "upstream_error" and isinstance(status, int):
            return EXIT_SERVER_ERROR if status >= 500 else EXIT_REFUSED
        return EXIT_REFUSED

    return exit_code
