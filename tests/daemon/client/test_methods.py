"""The typed method surface, written once: what each method puts on the wire."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from claykiln.daemon import AsyncioClient, Client, TrioClient
from claykiln.daemon.client._core import CALL_TIMEOUT_MARGIN, UNSET
from claykiln.daemon.client._methods import ClientSurface, Rpc


class Recorder(ClientSurface[Rpc, Rpc, Rpc, Rpc]):
    """A flavor whose every method returns the Rpc it would send."""

    def _init_connections(self) -> None:
        pass

    def _dispatch(self, rpc: Rpc) -> Rpc:
        return rpc


@pytest.fixture
def kiln(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path / "k.sock", timeout=7.0)


def test_methods_send_their_wire_names_and_only_given_arguments(kiln: Recorder) -> None:
    """Each typed method names its wire method and sends only the arguments it was given."""
    sent = [
        kiln.hello(),
        kiln.status(),
        kiln.breaker_list(),
        kiln.breaker_force("clay", "open"),
        kiln.request("dlq.list", {"limit": 5}),
    ]
    assert [(r.method, r.args) for r in sent] == [
        ("hello", None),
        ("status", None),
        ("breaker.list", None),
        ("breaker.force", {"name": "clay", "state": "open"}),
        ("dlq.list", {"limit": 5}),
    ]


def test_call_arguments_hold_only_what_was_given(kiln: Recorder) -> None:
    """call omits unset arguments, sends json=None as JSON null, refuses json with body."""
    assert kiln.call("op").args == {"operation": "op"}
    assert kiln.call("op", json=None).args == {"operation": "op", "json": None}
    full = kiln.call(
        "op",
        path_params={"id": "w1"},
        query={"q": 1},
        body=b"raw",
        headers={"h": "v"},
        lane="bulk",
        deadline_ms=250,
        idempotency_key="k",
    )
    assert full.args == {
        "operation": "op",
        "path_params": {"id": "w1"},
        "query": {"q": 1},
        "body": b"raw",
        "headers": {"h": "v"},
        "lane": "bulk",
        "deadline_ms": 250,
        "idempotency_key": "k",
    }
    with pytest.raises(ValueError, match="json= or body="):
        kiln.call("op", json={}, body=b"x")
    assert repr(UNSET) == "UNSET" and not UNSET


def test_timeouts_and_retry_safe_travel_with_the_rpc(kiln: Recorder) -> None:
    """The client timeout is per call, else deadline + margin, else the client's; retry_safe
    is the caller's word."""
    assert kiln.status().client_timeout(kiln.timeout) == 7.0
    assert kiln.status(timeout=2).client_timeout(kiln.timeout) == 2.0
    rpc = kiln.call("op", deadline_ms=1500, retry_safe=True)
    assert rpc.client_timeout(kiln.timeout) == 1.5 + CALL_TIMEOUT_MARGIN
    assert (rpc.retry_safe, kiln.call("op").retry_safe) == (True, None)
    assert kiln.request("x", retry_safe=False).retry_safe is False
    with pytest.raises(ValueError, match="positive"):
        kiln.hello(timeout=0).client_timeout(kiln.timeout)


def test_every_flavor_has_the_one_surface() -> None:
    """The three flavors inherit the same typed methods and constructor (no copies)."""
    names = ["request", "hello", "status", "call", "breaker_list", "breaker_force", "__init__"]
    for flavor in (Client, TrioClient, AsyncioClient):
        assert issubclass(flavor, ClientSurface)
        for name in names:
            assert getattr(flavor, name) is getattr(ClientSurface, name), (flavor, name)
    parameters = inspect.signature(ClientSurface.call).parameters
    assert list(parameters)[-2:] == ["timeout", "retry_safe"]


def test_surface_options_are_validated(tmp_path: Path) -> None:
    """Timeouts must be positive; the socket path is taken as given."""
    kiln: Any = Recorder(tmp_path / "x.sock", connect_timeout=0.5)
    assert (kiln.socket_path, kiln.connect_timeout, kiln.timeout) == (tmp_path / "x.sock", 0.5, 30)
    with pytest.raises(ValueError, match="positive"):
        Recorder(tmp_path / "x.sock", connect_timeout=-1)
