"""``kiln metrics``: the daemon's figures once, in the Prometheus text format.

The same text ``[daemon] metrics_textfile`` holds (docs/operations.md, "Metrics"); ``--json``
parses it with prometheus_client's parser into ``{sample name: [{labels, value}]}``.
"""

from __future__ import annotations

import click

from claykiln.daemon.cli.common import print_json, request

__all__ = ["metrics"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The samples as JSON.")
@click.pass_context
def metrics(ctx: click.Context, as_json: bool) -> None:
    """Print the daemon's metrics in the Prometheus text format."""
    result = request(ctx, "metrics", {})
    text = str(result.get("text", ""))
    if not as_json:
        click.echo(text, nl=False)
        return
    from claykiln.daemon.metrics import parse_metrics

    samples = parse_metrics(text)
    print_json(
        {
            name: [{"labels": labels, "value": value} for labels, value in found]
            for name, found in samples.items()
        }
    )
