"""Ctrl-C for the interactive commands (``kiln top``, ``kiln demo``) as a cancellation.

``until_sigint(fn, *args)`` runs ``await fn(*args)`` in trio with SIGINT taken by a signal
receiver: the first SIGINT cancels the run, so the command's shielded cleanup runs as it would
for any cancellation, and the signal is never lost (a KeyboardInterrupt raised asynchronously,
e.g. inside a finalizer, can be). Returns ``(result, False)``, or ``(None, True)`` when
interrupted. The daemon's own signals are handled elsewhere (daemon/app.py).
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

__all__ = ["until_sigint"]

T = TypeVar("T")


async def until_sigint(fn: Callable[..., Awaitable[T]], *args: Any) -> tuple[T | None, bool]:
    """``await fn(*args)``, cancelled by the first SIGINT; see the module docstring."""
    result: T | None = None
    done = False
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def interrupt() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(interrupt)
            result = await fn(*args)
            done = True
            nursery.cancel_scope.cancel()
    return result, not done
