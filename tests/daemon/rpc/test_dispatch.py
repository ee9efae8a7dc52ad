"""Dispatch: the narrow object a connection holds instead of the server."""

from __future__ import annotations

import subprocess
import sys

import trio
import trio.testing

from claykiln.daemon.rpc.dispatch import Dispatch, ServerCounters
from claykiln.daemon.rpc.types import ServerLimits

IO_TIMEOUT = 10.0  # seconds; a hang fails instead of stalling CI


def test_importing_the_connection_does_not_import_the_server() -> None:
    """claykiln.daemon.rpc.connection loads without claykiln.daemon.rpc.server."""
    code = (
        "import sys, claykiln.daemon.rpc.connection;"
        "assert 'claykiln.daemon.rpc.server' not in sys.modules, 'server imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


async def test_wait_idle_returns_once_the_last_request_ends() -> None:
    """wait_idle returns at once when idle, else when in-flight requests drop to zero."""
    counters = ServerCounters()
    dispatch = Dispatch({}, ServerLimits(), lambda peer: False, counters)
    with trio.fail_after(IO_TIMEOUT):
        await dispatch.wait_idle()
        dispatch.begin_request()
        dispatch.begin_request()
        assert counters.in_flight == 2
        async with trio.open_nursery() as nursery:
            idle = trio.Event()

            async def waiter() -> None:
                await dispatch.wait_idle()
                idle.set()

            nursery.start_soon(waiter)
            dispatch.end_request()
            await trio.testing.wait_all_tasks_blocked()
            assert not idle.is_set()
            dispatch.end_request()
        assert idle.is_set() and counters.in_flight == 0


def test_counters_view_is_the_status_server_section() -> None:
    """The view carries every figure status shows under ``server``, draining included."""
    counters = ServerCounters(connections=2, requests=9, draining=True)
    assert counters.view() == {
        "connections": 2,
        "connections_total": 0,
        "requests": 9,
        "in_flight": 0,
        "protocol_errors": 0,
        "refused": 0,
        "cut_off": 0,
        "held_back": 0,
        "draining": True,
    }
