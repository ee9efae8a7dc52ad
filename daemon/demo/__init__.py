"""``kiln demo``: the daemon at work against a local Clay simulator (a tool, not the product).

``command`` is the click command; ``run`` drives the phases (``phases``, ``phase_429``) through a
real daemon (``daemon``) and simulator (``sim``) process, ``watch`` and ``model`` count what
happened, ``render`` shows it and ``story`` words the summary. Nothing here is imported by the
daemon itself.
"""
