"""The words of ``kiln demo``'s summary: a highlight per phase and "What you just saw".

Pure text from the summary map (the one ``--json`` prints), so every sentence quotes a figure
counted during the run and the terminal and the JSON can never disagree. Each phase's paragraph
explains what a figure could be mistaken for: the pacing burst against Clay's (the gate keeps a
jitter margin), the length of a Retry-After closure against what was left of it when seen, and
the refusals after Clay healed against failures (the breaker waits out its reset timeout).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["explain", "highlight", "num"]


def highlight(name: str, facts: dict[str, Any]) -> str:
    """The phase table's one-line highlight of phase ``name``, quoting its facts."""
    if name == "pacing":
        arrivals = facts.get("arrivals", {})
        return (
            f"{facts.get('rows_stored_by_clay')} rows stored / "
            f"{facts.get('rows_acknowledged')} acknowledged; "
            f"burst {arrivals.get('burst_rows')} (the gate spends "
            f"{num(facts.get('gate', {}).get('tokens_at_once'))} of Clay's "
            f"{facts.get('clay_limit', {}).get('burst')} tokens), then "
            f"{arrivals.get('steady_rows_per_s')} rows/s; 429s: {facts.get('clay_429')}"
        )
    if name == "rate_limit":
        return (
            f"Retry-After {num(facts.get('retry_after_s'))} s closed {facts.get('gate')} "
            f"({facts.get('gate_reopens_in_s_at_first_sight')} s left when first seen); "
            f"{facts.get('public_requests_during_closure')} Public API requests to Clay "
            f"meanwhile, {facts.get('rate_limited')} rate_limited; "
            f"{facts.get('webhook_requests_during_closure')} webhook pushes went through"
        )
    if name == "outage":
        return (
            f"{facts.get('app_calls_during_outage')} calls during the outage, "
            f"{facts.get('refused_breaker_open')} breaker_open, "
            f"{facts.get('clay_requests_during_outage')} reached Clay; after healing "
            f"{facts.get('refused_after_healing')} refused while breaker {facts.get('breaker')} "
            f"waited out its open interval; breaker now "
            f"{facts.get('breaker_state_at_end')}{_pushes_highlight(facts)}"
        )
    if name == "lanes":
        return (
            f"{facts.get('lane_full')} lane_full, {facts.get('rows_stored_by_clay')} rows "
            f"stored; critical {facts.get('critical_ok')} ok (max "
            f"{facts.get('critical_max_ms')} ms)"
        )
    return ""


def _pushes_highlight(facts: dict[str, Any]) -> str:
    pushes = facts.get("webhook_pushes_during_outage")
    if not isinstance(pushes, dict):
        return ""
    return (
        f"; webhook pushes meanwhile {pushes.get('ok')}/{pushes.get('calls')} ok on breaker "
        f"{facts.get('webhook_breaker')}"
    )


def num(value: Any, places: int | None = None) -> str:
    """A figure as the text quotes it: ``3`` for 3.0; rounded to ``places`` decimals when given
    (``1.04`` for 1.041, ``2`` for 2.0004 with ``places=2``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value if places is None else round(value, places):g}"
    return str(value)


def _times(n: Any) -> str:
    return "never" if n == 0 else "once" if n == 1 else f"{n} times"


def explain(summary: dict[str, Any]) -> list[str]:
    """A few paragraphs on what happened, quoting the summary's figures."""
    phases = summary.get("phases", {})
    paragraphs = [
        _explain_pacing(phases.get("pacing", {}).get("facts", {})),
        _explain_429(phases.get("rate_limit", {}).get("facts", {})),
        _explain_outage(phases.get("outage", {}).get("facts", {})),
        _explain_lanes(phases.get("lanes", {}).get("facts", {})),
    ]
    out = [" ".join(sentences) for sentences in paragraphs if sentences]
    out.append(
        "Every figure above was counted from this run: the client library's results, the "
        "simulator's counters and rows, the daemon's status and its log. Point the [upstreams."
        "clay] base_url at api.clay.com and the same daemon does this for your apps."
    )
    return out


def _explain_pacing(facts: dict[str, Any]) -> list[str]:
    if not facts:
        return []
    arrivals, gate = facts.get("arrivals", {}), facts.get("gate", {})
    margin, rate = gate.get("margin_s", 0.0), gate.get("per_second", 0.0)
    return [
        f"Pacing: the app pushed {facts.get('rows_pushed')} rows as fast as it could.",
        f"Clay saw the first {arrivals.get('burst_rows')} arrive back to back, then "
        f"{arrivals.get('steady_rows_per_s')} rows/s: the daemon's webhook gate held the rest "
        f"until Clay had room.",
        f"Clay's bucket holds {facts.get('clay_limit', {}).get('burst')}; the gate spends at "
        f"most {num(gate.get('tokens_at_once'))} of those tokens at once"
        f"{_split_token(gate.get('tokens_at_once'), rate)}, keeping {margin * 1000:g} ms of "
        f"tokens ({margin * rate:g} rows at {rate:g}/s) in hand for network jitter, so a slow "
        f"first request never makes the ones behind it meet Clay's empty bucket.",
        f"Clay answered 429 {_times(facts.get('clay_429'))} and stored "
        f"{facts.get('rows_stored_by_clay')} rows for {facts.get('rows_acknowledged')} "
        f"acknowledged pushes.",
    ]


def _split_token(tokens: Any, rate: float) -> str:
    """ " (18 rows at once, the 19th 50 ms later)" for 18.5 tokens at 10/s; "" when whole."""
    if not isinstance(tokens, int | float) or rate <= 0:
        return ""
    whole = math.floor(tokens)
    wait = (1.0 - (tokens - whole)) / rate
    if tokens - whole < 1e-9:
        return ""
    return f" ({whole} rows at once, the {_ordinal(whole + 1)} {wait * 1000:.0f} ms later)"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _explain_429(facts: dict[str, Any]) -> list[str]:
    if not facts:
        return []
    pushes = facts.get("pushes_during_closure", {})
    retry_after = num(facts.get("retry_after_s"))
    return [
        f"429: one Public API call (me) got Clay's 429 with Retry-After {retry_after} s.",
        f"The daemon closed the Public API's gate ({facts.get('gate')}) for those "
        f"{retry_after} s, for every Public API caller: {facts.get('rate_limited')} routine "
        f"polls with short deadlines were told rate_limited at once, "
        f"{facts.get('public_calls_waiting_at_window_end')} dashboard calls were held (each for "
        f"at least {facts.get('waiting_calls_min_s')} s) and {facts.get('waiting_calls_ok')} "
        f"then succeeded, and Clay got {facts.get('public_requests_during_closure')} Public API "
        f"requests meanwhile.",
        f"Webhook pushes, paced by their own gate ({facts.get('webhook_gate')}), kept flowing: "
        f"{facts.get('webhook_requests_during_closure')} reached Clay during the closure, "
        f"{pushes.get('ok')} of {pushes.get('calls')} answered 2xx, the slowest in "
        f"{facts.get('push_max_ms')} ms.",
        f"The 429'd call was retried after the Retry-After "
        f"({facts.get('retried_call_attempts')} attempts) and the app never saw a 429.",
    ]


def _explain_outage(facts: dict[str, Any]) -> list[str]:
    if not facts:
        return []
    return [
        f"Outage: while Clay was down the app made {facts.get('app_calls_during_outage')} "
        f"calls; the open breaker ({facts.get('breaker')}) refused "
        f"{facts.get('refused_breaker_open')} of them at once, and only "
        f"{facts.get('clay_requests_during_outage')} requests reached Clay.",
        *_open_intervals(facts.get("open_intervals_s") or []),
        f"Once Clay healed, the breaker could not know before its next probe: it kept refusing "
        f"for {num(facts.get('healed_breaker_open_for_s'), 2)} s "
        f"({facts.get('refused_after_healing')} calls, refused at once rather than failed), "
        f"then the probe succeeded and closed it: {facts.get('ok_after_close')} of "
        f"{facts.get('calls_after_close')} calls ok since.",
        *_webhook_breaker(facts),
    ]


def _webhook_breaker(facts: dict[str, Any]) -> list[str]:
    """Whether table webhooks kept flowing on a breaker of their own during the outage."""
    pushes = facts.get("webhook_pushes_during_outage")
    if not isinstance(pushes, dict):
        return []
    states = " -> ".join(facts.get("webhook_breaker_states") or ["closed"])
    return [
        f"Table webhooks have a breaker of their own ({facts.get('webhook_breaker')}), so the "
        f"outage never held row pushes back: {pushes.get('ok')} of {pushes.get('calls')} pushes "
        f"made meanwhile answered 2xx and {facts.get('rows_stored_during_outage')} rows were "
        f"stored; breaker {facts.get('webhook_breaker')}: {states}.",
    ]


def _open_intervals(intervals: list[Any]) -> list[str]:
    """How long each opening lasted (the daemon's breaker.opened retry_after), in words."""
    if not intervals:
        return []
    first = f"It stayed open {num(intervals[0], 2)} s (its reset timeout), then a half-open probe"
    if len(intervals) == 1:
        return [f"{first} checked on Clay."]
    later = ", then ".join(f"{num(x, 2)} s" for x in intervals[1:])
    longer = (
        " (each opening in a row waits longer)"
        if all(isinstance(x, int | float) for x in intervals) and intervals[1] > intervals[0]
        else ""
    )
    return [
        f"{first} found Clay still down and it opened again, for {later}{longer}.",
    ]


def _explain_lanes(facts: dict[str, Any]) -> list[str]:
    if not facts:
        return []
    bulk = facts.get("bulk_lane", {})
    return [
        f"Lanes: the bulk lane holds {bulk.get('concurrency')} calls plus {bulk.get('queue')} "
        f"queued; the rest of the backfill ({facts.get('lane_full')} pushes) was refused at once "
        f"with lane_full instead of piling up, and critical calls kept answering "
        f"({facts.get('critical_ok')} ok, at most {facts.get('critical_max_ms')} ms).",
    ]
