"""``kiln dlq list|show|retry|kill|purge|export``: the dead-letter queue (docs/operations.md,
"Recovering dead jobs").

Filters (list, retry, purge, export): ``--operation``, ``--reason``, ``--older-than`` and
``--newer-than`` (durations such as ``1h``: how long ago the job died). ``export`` writes every
matching dead job as one JSON line (all pages; a raw body as ``body_base64``), which
``kiln submit --from`` reads back. ``purge`` deletes only with ``--yes``; without it, it prints
how many jobs match.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import IO, Any

import click

from claykiln.daemon.cli.common import EXIT_USAGE, fail, print_json, request

__all__ = ["dlq", "jsonable"]

REASONS = (
    "max_attempts",
    "rejected",
    "in_doubt",
    "quota_exhausted",
    "refused",
    "killed",
    "call_failed",
)


def _filters(
    operation: str | None, reason: str | None, older_than: str | None, newer_than: str | None
) -> dict[str, Any]:
    from claykiln.daemon.config.units import parse_duration

    args: dict[str, Any] = {}
    if operation:
        args["operation"] = operation
    if reason:
        args["reason"] = reason
    for name, text in (("older_than", older_than), ("newer_than", newer_than)):
        if text is not None:
            try:
                args[name] = parse_duration(text)
            except ValueError as exc:
                fail(f"--{name.replace('_', '-')}: {exc}", EXIT_USAGE)
    return args


def filter_options(command: Any) -> Any:
    """The filter options every bulk DLQ command takes."""
    for option in reversed(
        (
            click.option("--operation", "-o", help="Only jobs of this operation."),
            click.option("--reason", type=click.Choice(REASONS), help="Only jobs dead for this."),
            click.option("--older-than", help="Only jobs dead at least this long (e.g. 1h)."),
            click.option("--newer-than", help="Only jobs dead at most this long (e.g. 10m)."),
        )
    ):
        command = option(command)
    return command


def jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """An exported record as JSON: a raw request body as ``body_base64``."""
    out = dict(record)
    req = dict(out.get("request") or {})
    body = req.pop("body", None)
    if isinstance(body, bytes):
        req["body_base64"] = base64.b64encode(body).decode("ascii")
    elif body is not None:
        req["body"] = body
    out["request"] = req
    return out


@click.group()
def dlq() -> None:
    """The dead-letter queue: jobs that could not succeed, kept for an operator."""


@dlq.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--after", help="The cursor a previous page printed (next).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_list(
    ctx: click.Context,
    operation: str | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    limit: int,
    after: str | None,
    as_json: bool,
) -> None:
    """List dead jobs, oldest first: id, operation, reason, attempts, age, last error."""
    args = _filters(operation, reason, older_than, newer_than)
    args["limit"] = limit
    if after:
        args["after"] = after
    page = request(ctx, "dlq.list", args)
    if as_json or not sys.stdout.isatty():
        print_json(page)
        return
    if not page["items"]:
        click.echo("no dead jobs" + (" match" if len(args) > 1 else ""))
    for item in page["items"]:
        click.echo(
            f"{item['job_id']}  {item['operation']:<16} {item['reason']:<15} "
            f"attempts {item['attempts']:<2} age {item['age']:>9.0f}s  {item.get('error') or ''}"
        )
    if page["next"]:
        click.echo(f"more: --after {page['next']}")


@dlq.command("show")
@click.argument("job_id")
@click.pass_context
def dlq_show(ctx: click.Context, job_id: str) -> None:
    """Print a dead job as JSON: the request, the reason, every attempt (time, outcome, error).
    Exit status 1 when no dead job has this id."""
    job = request(ctx, "dlq.get", {"job_id": job_id})
    if job is None:
        fail(f"no dead job {job_id!r} (see kiln jobs show for jobs in other states)", 1)
    print_json(job)


@dlq.command("retry")
@click.argument("job_id", required=False)
@filter_options
@click.option("--all", "every", is_flag=True, help="Every dead job.")
@click.option("--rate", type=click.FloatRange(min=0.001), help="Jobs per second released.")
@click.pass_context
def dlq_retry(
    ctx: click.Context,
    job_id: str | None,
    operation: str | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    every: bool,
    rate: float | None,
) -> None:
    """Send dead jobs again (admin): one by id, those a filter selects, or --all. Each keeps
    its idempotency key; their due times are spread at --rate (default: [daemon.outbox])."""
    args = _filters(operation, reason, older_than, newer_than)
    if job_id:
        args = {"job_id": job_id}
    elif every:
        args["all"] = True
    if rate is not None:
        args["rate"] = rate
    print_json(request(ctx, "dlq.retry", args, timeout=300.0))


@dlq.command("kill")
@click.argument("job_id", required=False)
@click.option("--operation", "-o", help="Every waiting job of this operation.")
@click.option("--queue", help="Every waiting job of this queue (a webhook source).")
@click.pass_context
def dlq_kill(
    ctx: click.Context, job_id: str | None, operation: str | None, queue: str | None
) -> None:
    """Move waiting jobs to the dead-letter queue (admin): one by id, or those of an operation
    or queue (e.g. the jobs a held webhook source can never take)."""
    args: dict[str, Any] = {"job_id": job_id} if job_id else {}
    if operation:
        args["operation"] = operation
    if queue:
        args["queue"] = queue
    print_json(request(ctx, "dlq.kill", args, timeout=300.0))


@dlq.command("purge")
@filter_options
@click.option("--all", "every", is_flag=True, help="Every dead job.")
@click.option("--yes", is_flag=True, help="Delete (without it: count what would go).")
@click.pass_context
def dlq_purge(
    ctx: click.Context,
    operation: str | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    every: bool,
    yes: bool,
) -> None:
    """Delete dead jobs (admin) that a filter, or --all, selects; only with --yes."""
    args = _filters(operation, reason, older_than, newer_than)
    if every:
        args["all"] = True
    if yes:
        args["confirm"] = True
    answer = request(ctx, "dlq.purge", args, timeout=300.0)
    print_json(answer)
    if answer.get("dry_run"):
        click.echo(f"{answer['matched']} dead job(s) match; add --yes to delete them", err=True)


@dlq.command("export")
@filter_options
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default="-",
    help="File to write (default: stdout).",
)
@click.pass_context
def dlq_export(
    ctx: click.Context,
    operation: str | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    output: Path,
) -> None:
    """Write matching dead jobs as JSON lines, every page (kiln submit --from reads them)."""
    args = _filters(operation, reason, older_than, newer_than)
    args["limit"] = 500
    stream: IO[str] = sys.stdout if str(output) == "-" else output.open("w", encoding="utf-8")
    written = 0
    with stream:
        while True:
            page = request(ctx, "dlq.export", args)
            for record in page["items"]:
                stream.write(json.dumps(jsonable(record), sort_keys=True, default=str) + "\n")
                written += 1
            if page["next"] is None:
                break
            args["after"] = page["next"]
    if str(output) != "-":
        click.echo(f"exported {written} dead job(s) to {output}", err=True)
