"""Run the Clay simulator as its own process (``kiln bench``, ``kiln demo``, e2e tests, and
trying claykiln without a Clay account: docs/simulator.md).

    python -m claykiln.daemon.simulator --port 0 --port-file PATH [options]
    python -m claykiln.daemon.simulator --port 8787 --kiln-config DIR --detach

Once listening it writes, in this order, ``--kiln-config``'s files (a claykiln config for this
simulator and its credentials, ``_kiln_config.py``) and the bound port (decimal,
newline-terminated) to ``--port-file``, each atomically (a temporary file, then a rename), so a
reader never sees a partial file. ``--detach`` starts it in the background and returns once it
listens (exit 0, printing its pid and URL; 1 with its log when it could not start). SIGTERM
and SIGINT stop it with exit status 0. Steer it over HTTP under ``/_sim/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

from claykiln.daemon.simulator._kiln_config import write_kiln_config
from claykiln.daemon.simulator._model import (
    DEFAULT_API_KEY,
    DEFAULT_RECORD_CAP,
    SimSettings,
    SimulatorConfigError,
)
from claykiln.daemon.simulator._server import serve_simulator
from claykiln.daemon.simulator._simulator import Simulator

__all__ = ["main"]

DETACH_TIMEOUT = 30.0  # seconds --detach waits for the simulator to listen


DESCRIPTION = """\
Clay, simulated on 127.0.0.1: table webhooks and the Public API as Clay documents them, with
faults switchable under /_sim/ (docs/simulator.md). Try claykiln against it:

  python -m claykiln.daemon.simulator --port 8787 --kiln-config kiln-sim --detach
  kiln serve --config kiln-sim/kiln.toml &
  kiln --config kiln-sim/kiln.toml call me
"""


class _HelpFormat(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, each option with its default."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m claykiln.daemon.simulator",
        description=DESCRIPTION,
        formatter_class=_HelpFormat,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
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
        "--kiln-config",
        type=Path,
        metavar="DIR",
        help="once listening, write DIR/kiln.toml and DIR/credentials/ for claykiln to use it",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; return once listening (pid in DIR/simulator.pid)",
    )
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


async def _run(
    sim: Simulator, host: str, port: int, port_file: Path | None, kiln_config: Path | None
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(serve_simulator, sim, host=host, port=port))
            url = f"http://{host}:{bound}"
            if kiln_config is not None:
                config = write_kiln_config(kiln_config, url, sim.settings.api_key)
                print(f"claykiln config for it: {config}", file=sys.stderr)
            if port_file is not None:
                _write_port_file(port_file, bound)
            print(f"claykiln simulator listening on {url}", file=sys.stderr)
            async for _signum in signals:
                nursery.cancel_scope.cancel()
                break


def _detach(args: argparse.Namespace, argv: list[str]) -> int:
    """Start this simulator again without ``--detach`` in a session of its own; return 0 once
    it listens (printing its pid and URL), 1 when it exits first or stays silent."""
    workdir = args.kiln_config or Path(tempfile.mkdtemp(prefix="claykiln-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = args.port_file or workdir / "simulator.port"
    port_file.unlink(missing_ok=True)
    log_path = workdir / "simulator.log"
    command = [sys.executable, "-m", "claykiln.daemon.simulator"]
    command += [a for a in argv if a != "--detach"]
    if args.port_file is None:
        command += ["--port-file", str(port_file)]
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + DETACH_TIMEOUT
    while not port_file.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            print(f"error: the simulator did not start; its log ({log_path}):", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-2000:], file=sys.stderr)
            if child.poll() is None:
                child.kill()
            return 1
        time.sleep(0.05)
    (workdir / "simulator.pid").write_text(f"{child.pid}\n")
    port = int(port_file.read_text())
    print(f"claykiln simulator (pid {child.pid}) listening on http://{args.host}:{port}")
    if args.kiln_config is not None:
        print(f"claykiln config for it: {args.kiln_config / 'kiln.toml'}")
    print(f"log: {log_path}; stop it with: kill {child.pid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until SIGTERM/SIGINT, return the exit status (0 on a signal)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.detach:
        return _detach(args, argv)
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
    trio.run(_run, sim, args.host, args.port, args.port_file, args.kiln_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
