"""The msgpack-rpc server over a Unix socket (CONTRACT: docs/protocol.md).

- ``protocol``: the sans-I/O core (frame parser, limits, encoders; the vocabulary in ``frames``,
  decoding in ``decode``); the client library uses it too, so it imports nothing but msgpack.
- ``listener``: binding or adopting the listening socket; peer credentials.
- ``server``: accept loop, connection limits (in all and per uid), the sweeper (idle,
  drip-fed and stalled connections), drain.
- ``connection``: one connection's reader, backpressure, fairness and dispatch; ``replies``
  its reply writer; ``inbound`` its socket reads and hangup checks; ``poller`` the one epoll
  every idle reader parks in, whose task runs each reader's fast path without a task switch.
- ``dispatch``: what a connection needs of its server (method table, limits, admin check,
  counters, in-flight bookkeeping, shared answers, the damped peer log), so ``connection``
  never imports ``server``.
- ``types``: the values they share (``ServerLimits``, ``RequestContext``, ``Method``).

This package knows nothing of the daemon's actors: the method table is built in
``claykiln.daemon.methods`` and handed to the ``Server``.
"""
