"""``kiln top``: the daemon live, built on ``subscribe`` (docs/operations.md, "kiln top").

On a terminal it takes the alternate screen and redraws in place four times a second
(countdowns move between ticks) without clearing, so nothing flickers; it fits 80 x 24 and
uses a larger terminal's room. ``q`` (or Ctrl-C) quits and gives the terminal back as it was:
the screen, the cursor and the input mode (the view reads keys one by one, ``cbreak``). When
the daemon goes away the view says so and subscribes again as soon as one answers.

Not on a terminal (a pipe, a log, ``--plain``) it prints one line per tick and one per event.
``--once`` prints one snapshot (every lane, upstream, breaker and gate and the outbox and DLQ
counts) and exits: as the screen on a terminal, as plain lines otherwise.

Exit status: 0 on q, Ctrl-C or ``--once``; 3 when no daemon answers at start (as every client
command); 1 when the daemon refuses the subscription.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import click
import trio

from claykiln.daemon.cli.common import (
    EXIT_REFUSED,
    client_socket,
    connect_timeout,
    error_line,
    fail,
    unreachable,
)
from claykiln.daemon.cli.top_view import (
    TopModel,
    plain_event,
    plain_snapshot,
    plain_tick,
    screen_lines,
)
from claykiln.daemon.client import ConnectionLost, DaemonUnavailable, KilnError
from claykiln.daemon.client._subscribe_async import TrioSubscription
from claykiln.daemon.interrupt import until_sigint

__all__ = ["top"]

TOPICS: Final = ["tick", "breaker", "gate", "health", "dlq", "alert"]
REDRAW: Final = 0.25  # seconds between redraws (countdowns move between ticks)
RECONNECT: Final = 1.0  # seconds between attempts while the daemon is away
BUFFER: Final = 256  # notifications the daemon holds for the view


@click.command()
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--plain", is_flag=True, help="Plain lines even on a terminal.")
@click.pass_context
def top(ctx: click.Context, once: bool, plain: bool) -> None:
    """Watch the daemon live: lanes, upstreams, breakers, gates, outbox and alerts (q quits)."""
    path, origin = client_socket(ctx.obj["socket"], ctx.obj["config"])
    tty_out = sys.stdout.isatty() and not plain
    try:
        trio.run(_until_interrupted, path, once, tty_out, connect_timeout(ctx))
    except BaseException as exc:
        _exit_for(_leaf(exc), path, origin)


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio wraps nursery errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _exit_for(exc: BaseException, path: Path, origin: str) -> None:
    """Exit as the module docstring says for what ended the view; re-raise anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return
    if isinstance(exc, DaemonUnavailable):
        unreachable(exc, path, origin)
    if isinstance(exc, KilnError):
        fail(error_line(exc), EXIT_REFUSED)
    raise exc


async def _until_interrupted(path: Path, once: bool, tty_out: bool, waiting: float) -> None:
    """``_main`` until it returns or SIGINT (Ctrl-C) comes, which ends it like q does."""
    await until_sigint(_main, path, once, tty_out, waiting)


def _subscription(path: Path, waiting: float) -> TrioSubscription:
    args = {"topics": TOPICS, "buffer": BUFFER}
    return TrioSubscription(path, args, timeout=10.0, connect_timeout=waiting)


async def _first_tick(sub: TrioSubscription) -> dict[str, Any]:
    tick = sub.info.get("tick")
    while tick is None:
        note = await sub.receive()
        if note.method == "tick":
            tick = note.args
    return dict(tick)


async def _main(path: Path, once: bool, tty_out: bool, waiting: float) -> None:
    sub = await _subscription(path, waiting).open()
    try:
        if once:
            tick = await _first_tick(sub)
            if tty_out:
                from rich.console import Console

                console = Console()
                model = TopModel()
                model.add_tick(tick, time.monotonic())
                width, height = console.size
                for line in screen_lines(model, width, height, time.monotonic()):
                    console.print(line)
            else:
                for plain in plain_snapshot(tick):
                    print(plain)
            return
        if tty_out:
            await _live(path, sub)
        else:
            await _plain(path, sub)
    finally:
        await sub.aclose()


async def _plain(path: Path, sub: TrioSubscription) -> None:
    """One line per tick and per event, flushed as they come, until EOF on stdout or Ctrl-C."""
    while True:
        try:
            tick = sub.info.get("tick")
            if tick is not None:
                _emit(plain_tick(tick))
            async for note in sub:
                _emit(plain_tick(note.args) if note.method == "tick" else plain_event(note.args))
        except ConnectionLost:
            _emit("kiln top: the daemon went away; waiting for it")
            sub = await _reconnect(path, sub)


def _emit(line: str) -> None:
    print(line, flush=True)


async def _reconnect(path: Path, old: TrioSubscription) -> TrioSubscription:
    await old.aclose()
    while True:
        try:
            return await _subscription(path, RECONNECT).open()
        except (DaemonUnavailable, ConnectionLost, OSError):
            await trio.sleep(RECONNECT)


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """stdin in cbreak mode (keys one by one, no echo; Ctrl-C still interrupts) for the block,
    its settings put back after; None when stdin is not a terminal."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield None
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _live(path: Path, sub: TrioSubscription) -> None:
    """The full-screen view until q or Ctrl-C."""
    from rich.console import Console, Group
    from rich.live import Live

    console = Console()
    model = TopModel()
    tick = sub.info.get("tick")
    if tick is not None:
        model.add_tick(tick, time.monotonic())
    holder = [sub]

    def frame() -> Group:
        width, height = console.size
        return Group(*screen_lines(model, width, height, time.monotonic()))

    async def notes(done: trio.CancelScope) -> None:
        while True:
            try:
                async for note in holder[0]:
                    if note.method == "tick":
                        model.add_tick(note.args, time.monotonic())
                    else:
                        model.add_event(note.args)
            except ConnectionLost:
                model.status = "the daemon went away: waiting for it to come back ..."
                holder[0] = await _reconnect(path, holder[0])
                model.status = ""
                tick = holder[0].info.get("tick")
                if tick is not None:
                    model.add_tick(tick, time.monotonic())

    async def keys(fd: int, done: trio.CancelScope) -> None:
        while True:
            await trio.lowlevel.wait_readable(fd)
            typed = os.read(fd, 64)
            if not typed or b"q" in typed or b"Q" in typed:
                done.cancel()
                return

    try:
        with (
            _keys() as fd,
            Live(frame(), console=console, screen=True, auto_refresh=False, transient=True) as live,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(notes, nursery.cancel_scope)
                if fd is not None:
                    nursery.start_soon(keys, fd, nursery.cancel_scope)
                while True:
                    live.update(frame(), refresh=True)
                    await trio.sleep(REDRAW)
    finally:
        if holder[0] is not sub:
            await holder[0].aclose()
