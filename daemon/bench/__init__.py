"""``kiln bench``: the benchmarks behind docs/performance.md (a tool, not the product).

``command`` is the click command and the scenario table; ``scenarios`` and ``outage`` run one
scenario each against real processes (``procs``); ``load`` is the load generator that runs in
its own process, ``measure`` turns its figures into results, and ``http``, ``writes``,
``naive`` and ``echo`` are the baselines each figure is compared with. Nothing here is imported
by the daemon itself.
"""
