"""Run the Clay simulator as its own process (for ``kiln bench``, ``kiln demo`` and e2e tests).

    python -m claykiln.daemon.simulator --port 0 --port-file PATH [options]

Once listening it writes the bound port (decimal, newline-terminated) to ``--port-file``
atomically (write to a temporary file, then rename), so a reader never sees a partial file.
SIGTERM and SIGINT stop it with exit status 0. Steer it over HTTP under ``/_sim/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from functools import partial
from pathlib import Path

import trio

from claykiln.daemon.simulator._model import (
    DEFAULT_API_KEY,
    DEFAULT_RECORD_CAP,
    SimSettings,
    SimulatorConfigError,
)
from claykiln.daemon.simulator._server import serve_simulator
from claykiln.daemon.simulator._simulator import Simulator

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m claykiln.daemon.simulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--webhook-rate", type=float, default=10.0, help="webhook tokens per second")
    p.add_argument("--webhook-burst", type=int, default=20, help="webhook bucket size")
    p.add_argument("--record-cap", type=int, default=DEFAULT_RECORD_CAP, help="rows per webhook")
    p.add_argument("--api-key", default=DEFAULT_API_KEY, help="the valid clay-api-key")
    p.add_argument("--poll-running-count", type=int, default=2, help="202 polls before 200")
    p.add_argument("--public-rate", type=float, default=100.0, help="public API tokens/second")
    p.add_argument("--public-burst", type=int, default=200, help="public API bucket size")
    p.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="ID[:TOKEN]",
        help="pre-configure a webhook, optionally with its x-clay-webhook-auth token",
    )
    return p


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


async def _run(sim: Simulator, host: str, port: int, port_file: Path | None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(serve_simulator, sim, host=host, port=port))
            if port_file is not None:
                _write_port_file(port_file, bound)
            print(f"claykiln simulator listening on http://{host}:{bound}", file=sys.stderr)
            async for _signum in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until SIGTERM/SIGINT, return the exit status (0 on a signal)."""
    args = _parser().parse_args(argv)
    try:
        settings = SimSettings(
            webhook_rate=args.webhook_rate,
            webhook_burst=args.webhook_burst,
            record_cap=args.record_cap,
            api_key=args.api_key,
            poll_running_count=args.poll_running_count,
            public_rate=args.public_rate,
            public_burst=args.public_burst,
        )
    except SimulatorConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sim = Simulator(settings)
    for spec in args.webhook:
        webhook_id, _, token = spec.partition(":")
        sim.configure_webhook(webhook_id, token=token or None)
    trio.run(_run, sim, args.host, args.port, args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
