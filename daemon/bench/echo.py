"""The bare server ``kiln bench hello`` compares the daemon with: trio, a Unix socket, msgpack.

It decodes the same request frames the daemon does (``[0, msgid, method, [args]]``) and answers
each with a response frame of the same size as the daemon's: ``[1, msgid, nil, result]`` where
``result`` is the daemon's own ``hello`` result, given at start. No validation, no dispatch, no
task per request and no writer task: the replies to everything one read completed go out in one
``send_all``. That is the floor a trio msgpack-rpc server cannot beat on this machine.

Run it as its own process::

    python -m claykiln.daemon.bench.echo --socket PATH --reply-json '{"protocol": 1, ...}'

It prints ``READY`` on stdout once it accepts connections and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
from functools import partial
from pathlib import Path
from typing import Any, Final

import msgpack
import trio

__all__ = ["main", "serve_echo"]

RECV_SIZE: Final = 65_536
MAX_BUFFER: Final = 1024 * 1024
LISTEN_BACKLOG: Final = 512


async def _echo(result: Any, stream: trio.SocketStream) -> None:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=MAX_BUFFER)
    packb = msgpack.packb
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
        while data := await stream.receive_some(RECV_SIZE):
            unpacker.feed(data)
            replies = [
                packb([1, frame[1], None, result])
                for frame in unpacker
                if isinstance(frame, list) and len(frame) == 4 and frame[0] == 0
            ]
            if replies:
                await stream.send_all(b"".join(replies))


async def serve_echo(
    path: Path, result: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve on a fresh Unix socket at ``path`` until cancelled; the path is removed at exit."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(LISTEN_BACKLOG)
    try:
        async with trio.open_nursery() as nursery:
            listeners = [trio.SocketListener(sock)]
            await nursery.start(trio.serve_listeners, partial(_echo, result), listeners)
            task_status.started()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _run(path: Path, result: Any) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_echo, path, result)
            print("READY", flush=True)
            async for _signum in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until SIGTERM/SIGINT (exit 0)."""
    p = argparse.ArgumentParser(prog="python -m claykiln.daemon.bench.echo", description=__doc__)
    p.add_argument("--socket", type=Path, required=True, help="the Unix socket path to create")
    p.add_argument("--reply-json", default="{}", help="the result every reply carries, as JSON")
    ns = p.parse_args(argv)
    trio.run(_run, ns.socket, json.loads(ns.reply_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
