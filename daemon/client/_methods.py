"""The typed methods of the client library, written once for the sync, trio and asyncio flavors.

Each typed method builds an ``Rpc`` (the wire method, its named arguments, the client timeout,
what the caller said about repeating it, how its result is shaped) and hands it to the flavor's
``_dispatch``, which sends it and returns the result: a value for ``Client``, a coroutine for
``TrioClient`` and ``AsyncioClient``. ``ClientSurface`` is generic in those return types, so
``kiln.status()`` is a ``dict[str, Any]`` on a ``Client`` and a ``Coroutine[..., dict[str,
Any]]`` on the others; ``kiln.call(...)`` gives a ``CallResult`` (``_result.py``).

A new daemon method is added here, once: build its arguments, return ``self._dispatch(...)``
typed with the reply's shape (``MapReply``: a map, ``ListReply``: a list of maps, ``Reply``:
anything), and say in ``_resend.REPEAT_SAFE_METHODS`` whether it is safe to send twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypedDict, TypeVar, overload

from claykiln.daemon.client._core import UNSET, NotificationHandler, call_timeout, resolve_timeout
from claykiln.daemon.client._jobs import OutboxMethods
from claykiln.daemon.client._paths import client_socket_path
from claykiln.daemon.client._result import call_result

if TYPE_CHECKING:
    from claykiln.daemon.client._result import CallResult
    from claykiln.daemon.client._subscribe import Subscription
    from claykiln.daemon.client._subscribe_async import AsyncioSubscription, TrioSubscription

__all__ = ["ClientOptions", "ClientSurface", "Rpc"]

Reply = TypeVar("Reply")  # anything: Any, or a coroutine of Any
MapReply = TypeVar("MapReply")  # a map: dict[str, Any], or a coroutine of one
ListReply = TypeVar("ListReply")  # a list of maps, or a coroutine of one
CallReply = TypeVar("CallReply")  # a CallResult, or a coroutine of one


class Rpc:
    """One request as a typed method built it.

    ``timeout`` is the caller's (None: the client's default, or ``deadline_ms`` plus a margin);
    ``retry_safe`` is the caller's word on repeating it after a lost connection (None: decide
    from the method, the arguments and what the daemon advertises, ``_resend.py``); ``shape``
    turns the daemon's result into what the method returns (None: as sent).
    """

    __slots__ = ("args", "deadline_ms", "method", "retry_safe", "shape", "timeout")

    def __init__(
        self,
        method: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        deadline_ms: int | None = None,
        retry_safe: bool | None = None,
        shape: Callable[[Any], Any] | None = None,
    ) -> None:
        self.method = method
        self.args = args
        self.timeout = timeout
        self.deadline_ms = deadline_ms
        self.retry_safe = retry_safe
        self.shape = shape

    def shaped(self, result: Any) -> Any:
        """``result`` as the typed method returns it."""
        return result if self.shape is None else self.shape(result)

    def client_timeout(self, default: float) -> float:
        """Seconds to wait for each reply (``ValueError`` for a timeout that is not positive)."""
        return call_timeout(self.timeout, self.deadline_ms, default)

    def __repr__(self) -> str:
        return f"Rpc({self.method!r}, {self.args!r})"


HELLO: Final = Rpc("hello")


class ClientOptions(TypedDict, total=False):
    """The keyword options of every flavor's constructor (``connect`` classmethods take them)."""

    timeout: float
    connect_timeout: float
    on_notification: NotificationHandler | None


class ClientSurface(
    OutboxMethods[Reply, MapReply, ListReply], Generic[Reply, MapReply, ListReply, CallReply]
):
    """What every flavor has: its settings, and the daemon's methods as typed Python methods
    (the wire protocol: docs/protocol.md; the outbox and dead-letter ones in ``_jobs.py``).

    ``socket_path``: the argument, else ``$KILN_SOCKET``, else the default (``_paths.py``).
    ``timeout``: seconds to wait for a reply (per call: ``timeout=``). ``connect_timeout``:
    seconds to wait for the daemon to accept a connection, retrying while it (re)starts.
    ``on_notification(method, args)``: called for each notification the daemon sends.

    Every method raises the ``KilnError`` subclass of the daemon's error reply, ``KilnTimeout``
    when no reply came in time, ``ConnectionLost`` when the connection broke with a call that is
    not safe to send again, ``DaemonUnavailable`` when no daemon accepted a connection within
    ``connect_timeout``.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        on_notification: NotificationHandler | None = None,
    ) -> None:
        self.socket_path: Path = client_socket_path(socket_path)
        self.timeout = resolve_timeout(timeout, timeout)
        self.connect_timeout = resolve_timeout(connect_timeout, connect_timeout)
        self._on_notification = on_notification
        self._closed = False
        self._pid = os.getpid()  # a forked child notices it is not the process that connected
        self._init_connections()

    def _init_connections(self) -> None:
        """Set up the flavor's own connection state (called by ``__init__``)."""
        raise NotImplementedError

    def _dispatch(self, rpc: Rpc) -> Any:
        """Send ``rpc`` and return its result (the flavor's own; a coroutine for async ones)."""
        raise NotImplementedError

    def _rpc(self, method: str, args: Mapping[str, Any], timeout: float | None, **kw: Any) -> Any:
        """``_dispatch`` of a new ``Rpc`` (what the methods of ``_jobs.py`` send)."""
        return self._dispatch(Rpc(method, args, timeout=timeout, **kw))

    def request(
        self,
        method: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retry_safe: bool | None = None,
    ) -> Reply:
        """Send any method with its named arguments; return its result as the daemon sent it.

        ``retry_safe=True`` lets the client send it again after a lost connection (a daemon
        restart); ``False`` never does once it may have arrived; None decides by the method.
        """
        result: Reply = self._dispatch(Rpc(method, args, timeout=timeout, retry_safe=retry_safe))
        return result

    def hello(self, *, timeout: float | None = None) -> MapReply:
        """``hello``: ``{protocol, server, limits, admin}`` (and ``repeat_safe`` if the daemon
        advertises it)."""
        result: MapReply = self._dispatch(Rpc("hello", timeout=timeout))
        return result

    def status(self, *, timeout: float | None = None) -> MapReply:
        """``status``: uptime, version, counters, storage, actors and health."""
        result: MapReply = self._dispatch(Rpc("status", timeout=timeout))
        return result

    def call(
        self,
        operation: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        json: Any = UNSET,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        lane: str | None = None,
        deadline_ms: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        retry_safe: bool | None = None,
    ) -> CallReply:
        """``call``: run a configured operation; only the arguments given are sent (``json``
        when given at all: ``json=None`` sends JSON null; ``json`` and ``body`` exclude each
        other, ``ValueError``).

        Returns a ``CallResult``: the map ``{status, headers, body, attempts, duration_ms,
        ...}`` with its fields as attributes, ``replayed`` / ``coalesced`` for an answer given
        under an ``idempotency_key`` (see ``new_idempotency_key``), ``fallback`` /
        ``staleness`` / ``age`` / ``error`` for a cached answer standing in for a failure. The
        client timeout
        defaults to ``deadline_ms`` plus a margin when a deadline is given. After a lost
        connection the call is sent again when it carries an ``idempotency_key``, when the
        daemon lists ``operation`` as repeat-safe, or when ``retry_safe=True``.
        """
        if json is not UNSET and body is not None:
            msg = "pass either json= or body=, not both"
            raise ValueError(msg)
        args: dict[str, Any] = {"operation": operation}
        given: dict[str, Any] = {
            "path_params": dict(path_params) if path_params is not None else None,
            "query": dict(query) if query is not None else None,
            "body": body,
            "headers": dict(headers) if headers is not None else None,
            "lane": lane,
            "deadline_ms": deadline_ms,
            "idempotency_key": idempotency_key,
        }
        args.update({k: v for k, v in given.items() if v is not None})
        if json is not UNSET:  # json=None sends JSON null
            args["json"] = json
        rpc = Rpc(
            "call",
            args,
            timeout=timeout,
            deadline_ms=deadline_ms,
            retry_safe=retry_safe,
            shape=call_result,
        )
        result: CallReply = self._dispatch(rpc)
        return result

    def breaker_list(self, *, timeout: float | None = None) -> ListReply:
        """``breaker.list``: one map per breaker (``key``, ``state``, ``retry_after``, ...)."""
        result: ListReply = self._dispatch(Rpc("breaker.list", timeout=timeout))
        return result

    def breaker_force(self, name: str, state: str, *, timeout: float | None = None) -> MapReply:
        """``breaker.force`` (admin): ``open``, ``closed``, ``disabled`` or ``reset``.

        Returns the breaker's new view (as in ``breaker_list``); the daemon validates ``state``.
        """
        args = {"name": name, "state": state}
        result: MapReply = self._dispatch(Rpc("breaker.force", args, timeout=timeout))
        return result

    def metrics(self, *, timeout: float | None = None) -> MapReply:
        """``metrics``: ``{content_type, text}``, the daemon's figures in the Prometheus text
        format (what ``[daemon] metrics_textfile`` holds)."""
        result: MapReply = self._dispatch(Rpc("metrics", timeout=timeout))
        return result

    @overload
    def subscribe(
        self: ClientSurface[Any, dict[str, Any], list[dict[str, Any]], CallResult],
        topics: Sequence[str] | None = None,
        *,
        buffer: int | None = None,
    ) -> Subscription: ...
    @overload
    def subscribe(
        self: ClientSurface[
            Coroutine[Any, Any, Any],
            Coroutine[Any, Any, dict[str, Any]],
            Coroutine[Any, Any, list[dict[str, Any]]],
            Coroutine[Any, Any, CallResult],
        ],
        topics: Sequence[str] | None = None,
        *,
        buffer: int | None = None,
    ) -> TrioSubscription | AsyncioSubscription: ...
    def subscribe(
        self, topics: Sequence[str] | None = None, *, buffer: int | None = None
    ) -> Subscription | TrioSubscription | AsyncioSubscription:
        """``subscribe``: a subscription on a connection of its own, opened by ``with`` (sync)
        or ``async with`` (trio, asyncio), iterating over the notifications the daemon pushes
        (``_subscribe.py``; the topics and every notification: docs/protocol.md). ``topics``
        defaults to all of them (tick, breaker, gate, health, dlq, alert); ``buffer`` is how
        many notifications the daemon holds for this subscriber before it drops the oldest."""
        from claykiln.daemon.client._subscribe import subscription_for

        return subscription_for(self, topics, buffer)
