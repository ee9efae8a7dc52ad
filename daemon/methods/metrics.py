"""The ``metrics`` method: the daemon's figures in the Prometheus text format.

Answers ``{"content_type", "text"}`` (``text``: what ``[daemon] metrics_textfile`` holds,
``daemon/metrics.py``). Inline and ``shared``: a flood of ``metrics`` requests costs one
rendering per ``shared_answer_age``, like ``status``.
"""

from __future__ import annotations

from typing import Any

from claykiln.daemon.methods.args import check_names
from claykiln.daemon.metrics import CONTENT_TYPE, render_metrics
from claykiln.daemon.rpc.types import Method, RequestContext
from claykiln.daemon.runtime import Runtime

__all__ = ["methods"]

NO_ARGS = frozenset[str]()


def methods(runtime: Runtime) -> list[Method]:
    """``metrics``."""

    def metrics(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
        check_names("metrics", args, NO_ARGS)
        return {"content_type": CONTENT_TYPE, "text": render_metrics(runtime).decode()}

    return [Method("metrics", inline=metrics, shared=True)]
