"""claykiln.actors: the trio tasks that make a call reliable, and the call path that asks them.

Each actor is one module (a card docstring: owns / receives / replies / sends to / on
cancellation / on failure) over a pure sibling that decides without awaiting:

    breaker.py   BreakerBoard: a circuit breaker per key    breaker_state.py (the machine),
                                                            breaker_types.py (policy, views)
    gate.py      GateBoard: token buckets, Retry-After      gate_bucket.py (GCRA pacing)
    lanes.py     Lanes: bulkheads with bounded queues       lanes_book.py (admission)
    writer.py    Writer: the storage group-commit writer    (storage/ does the LMDB work)
    idempotency.py, fallback.py                             idempotency_*.py, fallback_policy.py
    upstream.py  UpstreamPool: HTTP/1.1 to one upstream,    upstream_http.py (values, URLs),
                 run in the caller's task (no inbox)        upstream_wire.py (h11), _httpx.py,
                                                            upstream_errors.py (error mapping)

The call path: ``pipeline.CallPipeline`` walks one request through lanes -> breaker -> gate ->
upstream in the caller's task, with retries (``retry.py``: pure backoff and budget decisions)
and the facts of ``call.py`` (operations, requests, results, what a status means for health).

Plumbing: ``mailbox.py`` (``Mailbox``: the bounded inbox with ask / tell / drain / stop, and the
``Reply`` slot), ``log.py`` (``get_logger`` and ``alert``, the one way to log).

Errors: ``errors.py`` draws the tree once; everything an actor refuses a caller with is a
``Refusal`` (``BreakerOpenRefusal``, ``LaneFullRefusal``, ...), turned into a wire error by the
server. ``mailbox.ActorStopped`` says an actor is not running.

Layering: daemon -> actors -> storage. Nothing here imports ``claykiln.daemon``; the daemon
builds each actor's settings class (``BreakerPolicy``, ``RatePolicy``, ``LanePolicy``,
``RetryPolicy``, ``UpstreamSettings``) from its config.
"""
