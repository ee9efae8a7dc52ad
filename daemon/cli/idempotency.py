"""``kiln idempotency show KEY`` and ``kiln idempotency forget KEY`` (admin)."""

from __future__ import annotations

import click

from claykiln.daemon.cli.common import EXIT_REFUSED, fail, print_json, request

__all__ = ["idempotency"]


@click.group()
def idempotency() -> None:
    """Show or forget the record of an idempotency key."""


@idempotency.command("show")
@click.argument("key")
@click.pass_context
def idempotency_show(ctx: click.Context, key: str) -> None:
    """Print the key's record as JSON: state (in_flight, completed, in_doubt), operation,
    fingerprint, started/expires (unix seconds), what was sent, the stored result.
    Exit status 1 when the daemon has no record of the key."""
    record = request(ctx, "idempotency.get", {"key": key})
    if record is None:
        fail(
            f"no record of idempotency key {key!r} (never used, expired and swept, or forgotten)",
            EXIT_REFUSED,
        )
    print_json(record)


@idempotency.command("forget")
@click.argument("key")
@click.pass_context
def idempotency_forget(ctx: click.Context, key: str) -> None:
    """Delete the key's record (admin), so the next call with it runs again. For a key in
    doubt: first check the upstream (did the row arrive? did the routine start?)."""
    answer = request(ctx, "idempotency.forget", {"key": key})
    print_json(answer)
    if not answer.get("forgotten"):
        fail(f"no record of idempotency key {key!r}; nothing to forget", EXIT_REFUSED)
