"""The method table over a started in-process Runtime: families merged, hello, status, breakers."""

from __future__ import annotations

import os

import pytest
import trio

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon import methods as method_table
from claykiln.daemon.methods import build_methods, core
from claykiln.daemon.rpc.listener import PeerCred
from claykiln.daemon.rpc.protocol import PROTOCOL_VERSION
from claykiln.daemon.rpc.types import RequestContext
from claykiln.daemon.runtime import Runtime, StoredRecords

IO_TIMEOUT = 10.0  # seconds; a hang fails instead of stalling CI
ADMIN = RequestContext(PeerCred(pid=os.getpid(), uid=os.geteuid(), gid=0), 1, 7, admin=True)


async def test_the_table_merges_every_family_with_its_dispatch_kind(runtime: Runtime) -> None:
    """hello, status, breaker.list inline; call with a precheck; breaker.force admin-only."""
    table = build_methods(runtime)
    kinds = {
        name: (m.inline is not None, m.handler is not None, m.precheck is not None, m.admin)
        for name, m in table.items()
    }
    assert kinds == {
        "hello": (True, False, False, False),
        "status": (True, False, False, False),
        "call": (False, True, True, False),
        "breaker.list": (True, False, False, False),
        "breaker.force": (False, True, False, True),
        "idempotency.get": (True, False, False, False),
        "idempotency.forget": (False, True, False, True),
        "cache.list": (True, False, False, False),
        "cache.purge": (False, True, False, True),
        "submit": (False, True, True, False),
        "submit_many": (False, True, True, False),
        "jobs.get": (True, False, False, False),
        "jobs.list": (True, False, False, False),
        "dlq.list": (True, False, False, False),
        "dlq.get": (True, False, False, False),
        "dlq.export": (True, False, False, False),
        "dlq.retry": (False, True, False, True),
        "dlq.kill": (False, True, False, True),
        "dlq.purge": (False, True, False, True),
        "quota.list": (True, False, False, False),
        "quota.release": (False, True, False, True),
        "subscribe": (True, False, False, False),
        "unsubscribe": (True, False, False, False),
        "metrics": (True, False, False, False),
    }


async def test_two_families_naming_one_method_are_refused(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A method registered by two families is a ValueError at start, naming the method."""
    monkeypatch.setattr(method_table, "FAMILIES", (core.methods, core.methods))
    with pytest.raises(ValueError, match="method 'hello' is registered twice"):
        build_methods(runtime)


async def test_hello_reports_protocol_server_limits_and_admin(runtime: Runtime) -> None:
    """hello answers the protocol version, the server's version, the limits and the caller's role."""
    hello = build_methods(runtime)["hello"].inline
    assert hello is not None
    answer = hello(ADMIN, {})
    assert answer["protocol"] == PROTOCOL_VERSION
    assert answer["server"] == "claykiln 0+test"
    assert answer["limits"]["max_frame"] == runtime.config.daemon.limits.max_frame
    assert answer["admin"] is True
    with pytest.raises(BadRequestRefusal, match="hello: unknown argument"):
        hello(ADMIN, {"verbose": True})


async def test_status_method_answers_the_status_view(runtime: Runtime) -> None:
    """status takes no arguments and answers the runtime's status view."""
    status = build_methods(runtime)["status"].inline
    assert status is not None
    assert status(ADMIN, {})["actors"] == dict(runtime.actors.states)
    with pytest.raises(BadRequestRefusal, match="allowed: \\(none\\)"):
        status(ADMIN, {"x": 1})


async def test_breaker_force_replies_once_the_state_is_on_disk(runtime: Runtime) -> None:
    """breaker.force answers the new view, and the board's record is committed by then."""
    force = build_methods(runtime)["breaker.force"].handler
    assert force is not None
    with trio.fail_after(IO_TIMEOUT):
        view = await force(ADMIN, {"name": "clay", "state": "open"})
    assert view["key"] == "clay"
    assert view["state"] == "forced_open"
    record = StoredRecords(runtime.store, runtime.writer, "breakers").load("clay")
    assert record is not None


async def test_breaker_force_refuses_an_unknown_key_or_state(runtime: Runtime) -> None:
    """An unknown breaker key names the known ones; an unknown state names the valid ones."""
    force = build_methods(runtime)["breaker.force"].handler
    assert force is not None
    with trio.fail_after(IO_TIMEOUT):
        with pytest.raises(BadRequestRefusal, match=r"no breaker 'nope'; known: .*clay"):
            await force(ADMIN, {"name": "nope", "state": "open"})
        with pytest.raises(BadRequestRefusal, match="state must be one of open, closed"):
            await force(ADMIN, {"name": "clay", "state": "ajar"})
