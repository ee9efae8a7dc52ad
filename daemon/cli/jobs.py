"""``kiln submit`` and ``kiln jobs show|list``: hand work to the durable outbox, look at it.

``kiln submit OPERATION [--param k=v ...] [--json ROW] ...`` prints the job (``{job_id, state,
existing, idempotency_key, due_at}``) once it is on disk. ``kiln submit --from FILE`` (``-``:
stdin) reads JSON lines, each a map of submit's arguments (``operation`` included) or a line of
``kiln dlq export``, and submits them in batches of ``BATCH`` (one durable write each); it
prints one answer per line and exits 1 when the daemon refused any.
"""

from __future__ import annotations

import base64
import datetime
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import click

from claykiln.daemon.cli.common import (
    EXIT_REFUSED,
    EXIT_USAGE,
    call_args,
    fail,
    print_json,
    request,
)

__all__ = ["BATCH", "jobs", "parse_when", "submit", "submit_args"]

BATCH: Final = 500
STATES: Final = ("pending", "retry_wait", "in_flight", "dead", "done")


def parse_when(text: str) -> float:
    """``--not-before``: unix seconds, an ISO 8601 time (``2026-12-03T10:00:00Z``) or a delay
    from now (``+90s``, ``+5m``)."""
    from claykiln.daemon.config.units import parse_duration

    try:
        if text.startswith("+"):
            return datetime.datetime.now(datetime.UTC).timestamp() + parse_duration(text[1:])
        try:
            return float(text)
        except ValueError:
            when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            return when.timestamp()
    except ValueError as exc:
        fail(f"--not-before takes unix seconds, an ISO 8601 time or +DURATION: {exc}", EXIT_USAGE)


def submit_args(line: dict[str, Any]) -> dict[str, Any]:
    """Submit's arguments from a JSON line: a map of them, or a ``kiln dlq export`` line (its
    ``request`` with its operation and idempotency key). ``body_base64`` becomes ``body``."""
    if "request" in line and "job_id" in line:
        args = {"operation": line["operation"], **line["request"]}
        args["idempotency_key"] = line["idempotency_key"]
    else:
        args = dict(line)
    encoded = args.pop("body_base64", None)
    if encoded is not None:
        args["body"] = base64.b64decode(encoded)
    return args


def _lines(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, text in enumerate(stream, 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            fail(f"line {number} is not JSON: {exc}", EXIT_USAGE)
        if not isinstance(value, dict):
            fail(f"line {number} must be a JSON object of submit arguments", EXIT_USAGE)
        yield number, submit_args(value)


def _submit_file(ctx: click.Context, source: Path) -> None:
    refused = 0
    stream: IO[str] = sys.stdin if str(source) == "-" else source.open(encoding="utf-8")
    with stream:
        batch: list[dict[str, Any]] = []

        def flush() -> int:
            answers = request(ctx, "submit_many", {"items": batch}, timeout=120.0)
            for answer in answers:
                click.echo(json.dumps(answer, sort_keys=True, default=str))
            batch.clear()
            return sum(1 for a in answers if "error" in a)

        for _, args in _lines(stream):
            batch.append(args)
            if len(batch) >= BATCH:
                refused += flush()
        if batch:
            refused += flush()
    if refused:
        fail(f"the daemon refused {refused} submit(s); see the error lines", EXIT_REFUSED)


@click.command()
@click.argument("operation", required=False)
@click.option("--param", "-p", multiple=True, help="Path parameter key=value.")
@click.option("--query", "-q", multiple=True, help="Query parameter key=value.")
@click.option("--header", "-H", multiple=True, help='Extra header "Name: value" (or name=value).')
@click.option("--json", "json_body", help="JSON request body (the row).")
@click.option("--lane", help="Lane override.")
@click.option("--deadline-ms", type=int, help="Budget of each attempt.")
@click.option("--idempotency-key", help="Idempotency key (a second submit finds the job).")
@click.option("--not-before", help="Not before: unix seconds, ISO 8601, or +DURATION.")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Submit every JSON line of this file (- for stdin): submit arguments or dlq export.",
)
@click.pass_context
def submit(
    ctx: click.Context,
    operation: str | None,
    param: tuple[str, ...],
    query: tuple[str, ...],
    header: tuple[str, ...],
    json_body: str | None,
    lane: str | None,
    deadline_ms: int | None,
    idempotency_key: str | None,
    not_before: str | None,
    source: Path | None,
) -> None:
    """Hand one call to the daemon's durable outbox; print the job once it is on disk."""
    if source is not None:
        if operation is not None:
            fail("give OPERATION or --from FILE, not both", EXIT_USAGE)
        _submit_file(ctx, source)
        return
    if operation is None:
        fail("give the OPERATION to submit (or --from FILE)", EXIT_USAGE)
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
    if not_before:
        args["not_before"] = parse_when(not_before)
    print_json(request(ctx, "submit", args))


@click.group()
def jobs() -> None:
    """Show or list the outbox's jobs."""


@jobs.command("show")
@click.argument("job_id")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str) -> None:
    """Print a job as JSON: state, request, attempts, history (time, outcome, error), reason.
    Exit status 1 when the daemon has no such job."""
    job = request(ctx, "jobs.get", {"job_id": job_id})
    if job is None:
        fail(f"no job {job_id!r} (never submitted, purged, or swept after it was done)", 1)
    print_json(job)


@jobs.command("list")
@click.option("--state", type=click.Choice(STATES), default="pending", show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--after", help="The cursor a previous page printed (next).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def jobs_list(ctx: click.Context, state: str, limit: int, after: str | None, as_json: bool) -> None:
    """List the jobs in one state (waiting ones by queue, then due time)."""
    args: dict[str, Any] = {"state": state, "limit": limit}
    if after:
        args["after"] = after
    page = request(ctx, "jobs.list", args)
    if as_json or not sys.stdout.isatty():
        print_json(page)
        return
    for item in page["items"]:
        click.echo(
            f"{item['job_id']}  {item['operation']:<16} {item['state']:<10} "
            f"attempts {item['attempts']}  {item['queue']}  {item.get('error') or ''}"
        )
    if page["next"]:
        click.echo(f"more: --after {page['next']}")
