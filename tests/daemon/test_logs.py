"""Logging contract: JSON fields, context, redaction, tracebacks without locals, alerts."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog
import trio
import trio.lowlevel
from hypothesis import given, settings
from hypothesis import strategies as st

from claykiln.daemon import logs
from claykiln.daemon.logs import (
    REDACTED,
    LogThrottle,
    add_secrets,
    alert,
    configure_logging,
    get_logger,
    set_secrets,
)

SECRET = "sk-live-9f8e7d6c5b4a"


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    set_secrets(())
    structlog.reset_defaults()


@pytest.fixture
def out() -> io.StringIO:
    stream = io.StringIO()
    configure_logging(fmt="json", secrets=[SECRET], stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_utc_timestamp_level_event_logger(out: io.StringIO) -> None:
    """A JSON line carries an ISO UTC timestamp, level, dotted event and logger name."""
    get_logger("claykiln.test").info("daemon.started", version="0.1.0")
    (line,) = lines(out)
    assert line["event"] == "daemon.started"
    assert line["level"] == "info"
    assert line["logger"] == "claykiln.test"
    assert line["version"] == "0.1.0"
    stamp = line["timestamp"]
    assert stamp.endswith(("Z", "+00:00"))
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    assert list(line)[:4] == ["timestamp", "level", "event", "logger"]


def test_context_vars_are_merged_and_unbound(out: io.StringIO) -> None:
    """Per-connection context bound via contextvars appears on lines inside the context only."""
    log = get_logger("claykiln.test")
    with structlog.contextvars.bound_contextvars(peer_pid=4242, peer_uid=1000, conn_id=7, msgid=3):
        log.info("conn.request")
    log.info("conn.closed")
    inside, outside = lines(out)
    assert (inside["peer_pid"], inside["peer_uid"], inside["conn_id"], inside["msgid"]) == (
        4242,
        1000,
        7,
        3,
    )
    assert "conn_id" not in outside


async def test_context_is_per_trio_task(out: io.StringIO) -> None:
    """Two connection tasks each log with their own bound conn_id."""
    log = get_logger("claykiln.test")

    async def connection(conn_id: int) -> None:
        structlog.contextvars.bind_contextvars(conn_id=conn_id)
        await trio.lowlevel.checkpoint()
        log.info("conn.request")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection, 1)
            nursery.start_soon(connection, 2)
    assert sorted(line["conn_id"] for line in lines(out)) == [1, 2]


def test_secret_in_event_and_fields_is_redacted(out: io.StringIO) -> None:
    """A configured secret anywhere in the event text or a field value becomes [REDACTED]."""
    get_logger("t").warning(f"upstream said {SECRET}", body=f"key={SECRET};", n=1)
    text = out.getvalue()
    assert SECRET not in text
    (line,) = lines(out)
    assert line["event"] == f"upstream said {REDACTED}"
    assert line["body"] == f"key={REDACTED};"
    assert line["n"] == 1


def test_secret_in_nested_values_is_redacted(out: io.StringIO) -> None:
    """Secrets inside nested dicts, lists, tuples and bytes are redacted; structure is kept."""
    get_logger("t").info(
        "upstream.request",
        request={"params": [1, {"q": f"a {SECRET} b"}], "pair": ("x", SECRET)},
        raw=SECRET.encode(),
    )
    assert SECRET not in out.getvalue()
    (line,) = lines(out)
    assert line["request"]["params"] == [1, {"q": f"a {REDACTED} b"}]
    assert line["request"]["pair"] == ["x", REDACTED]
    assert REDACTED in line["raw"]


def test_sensitive_keys_are_redacted_whole(out: io.StringIO) -> None:
    """Values under credential-like keys are replaced, at any depth; look-alikes are kept."""
    get_logger("t").info(
        "upstream.request",
        headers={
            "Authorization": "Bearer abc",
            "x-clay-webhook-auth": "hook-1",
            "clay-api-key": "k1",
            "Content-Type": "application/json",
        },
        header_list=[("X-Clay-Webhook-Auth", "hook-2"), ("accept", "*/*")],
        api_key="k2",
        credential="c",
        password="p",
        token="t",
        webhook_token="w",
        tokens=5,
        retry_after=1.5,
    )
    (line,) = lines(out)
    headers = line["headers"]
    assert headers["Authorization"] == headers["x-clay-webhook-auth"] == REDACTED
    assert headers["clay-api-key"] == REDACTED
    assert headers["Content-Type"] == "application/json"
    assert line["header_list"] == [["X-Clay-Webhook-Auth", REDACTED], ["accept", "*/*"]]
    for key in ("api_key", "credential", "password", "token", "webhook_token"):
        assert line[key] == REDACTED, key
    assert (line["tokens"], line["retry_after"]) == (5, 1.5)


def test_secret_inside_an_object_repr_is_redacted(out: io.StringIO) -> None:
    """An object rendered through repr() cannot smuggle a secret past the redaction."""

    class Client:
        def __repr__(self) -> str:
            return f"Client(key={SECRET!r})"

    get_logger("t").info("upstream.client", client=Client())
    assert SECRET not in out.getvalue()
    assert REDACTED in lines(out)[0]["client"]


def _fail_with_secret_in_local_and_message() -> None:
    api_token_local = SECRET
    msg = f"auth failed for {api_token_local}"
    raise ValueError(msg)


def test_json_traceback_has_no_locals_and_no_secret(out: io.StringIO) -> None:
    """An exception's message is redacted and frames render without local variables."""
    try:
        _fail_with_secret_in_local_and_message()
    except ValueError:
        get_logger("t").exception("upstream.failed")
    text = out.getvalue()
    assert SECRET not in text
    assert "api_token_local" not in text
    (line,) = lines(out)
    (exc,) = line["exception"]
    assert exc["exc_type"] == "ValueError"
    assert exc["exc_value"] == f"auth failed for {REDACTED}"
    assert [f["name"] for f in exc["frames"]][-1] == "_fail_with_secret_in_local_and_message"
    assert all("locals" not in frame for frame in exc["frames"])


def test_console_rendering_redacts_traceback_without_locals() -> None:
    """On a TTY lines render for people; the traceback text is redacted and has no locals."""
    stream = TtyStringIO()
    configure_logging(fmt="auto", secrets=[SECRET], stream=stream)
    try:
        _fail_with_secret_in_local_and_message()
    except ValueError:
        get_logger("t").exception("upstream.failed", conn_id=9)
    text = stream.getvalue()
    assert not text.lstrip().startswith("{")
    assert "upstream.failed" in text
    assert "Traceback (most recent call last)" in text
    assert f"ValueError: auth failed for {REDACTED}" in text
    assert SECRET not in text
    assert "api_token_local" not in text


def test_auto_format_is_json_when_not_a_tty() -> None:
    """fmt=auto renders JSON lines on a stream that is not a TTY."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    get_logger("t").info("daemon.ready")
    assert lines(stream)[0]["event"] == "daemon.ready"


def test_secrets_can_be_replaced_at_runtime(out: io.StringIO) -> None:
    """set_secrets swaps the redaction set (values stripped); add_secrets extends it."""
    log = get_logger("t")
    set_secrets(["rotated-key-123\n"])
    log.info("config.reloaded", old=SECRET, new="rotated-key-123")
    add_secrets(["webhook-tok-456"])
    log.info("credentials.loaded", new="rotated-key-123", hook="webhook-tok-456")
    first, second = lines(out)
    assert (first["old"], first["new"]) == (SECRET, REDACTED)
    assert (second["new"], second["hook"]) == (REDACTED, REDACTED)


def test_alert_fields_and_levels(out: io.StringIO) -> None:
    """alert() adds alert=true and severity, and logs at the matching level."""
    log = get_logger("claykiln.actors.breaker")
    alert(log, "storage.full", severity="critical", used_bytes=10)
    alert(log, "breaker.opened", severity="warning", upstream="clay")
    alert(log, "breaker.closed", severity="info", upstream="clay")
    got = [(x["event"], x["alert"], x["severity"], x["level"]) for x in lines(out)]
    assert got == [
        ("storage.full", True, "critical", "critical"),
        ("breaker.opened", True, "warning", "warning"),
        ("breaker.closed", True, "info", "info"),
    ]
    with pytest.raises(ValueError, match="severity"):
        alert(log, "x.y", severity="urgent")


def test_level_filters_lines_but_never_alerts() -> None:
    """Lines below the level are dropped; alerts of any severity are still emitted."""
    stream = io.StringIO()
    configure_logging(fmt="json", level="error", stream=stream)
    log = get_logger("t")
    log.debug("a.debug")
    log.info("a.info")
    log.warning("a.warning")
    log.error("a.error")
    alert(log, "breaker.closed", severity="info")
    assert [x["event"] for x in lines(stream)] == ["a.error", "breaker.closed"]

    configure_logging(fmt="json", level="info", stream=stream)
    log.debug("b.debug")
    log.info("b.info")
    assert [x["event"] for x in lines(stream)][-1] == "b.info"


def test_reconfigure_reaches_loggers_made_earlier() -> None:
    """A module-level logger made before configure_logging follows each reconfiguration."""
    log = get_logger("claykiln.early")
    first, second = io.StringIO(), io.StringIO()
    configure_logging(fmt="json", stream=first)
    log.info("one.event")
    configure_logging(fmt="json", level="debug", stream=second)
    log.debug("two.event")
    assert [x["event"] for x in lines(first)] == ["one.event"]
    assert [x["event"] for x in lines(second)] == ["two.event"]


def test_bad_level_or_format_is_refused() -> None:
    """Unknown level or format raises ValueError naming the allowed values."""
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        configure_logging(level="verbose", stream=io.StringIO())
    with pytest.raises(ValueError, match="auto, json or console"):
        configure_logging(fmt="xml", stream=io.StringIO())  # type: ignore[arg-type]


def test_log_throttle_counts_suppressed_lines() -> None:
    """One line per key per interval passes; the next one reports how many were suppressed."""
    throttle = LogThrottle(interval=10.0)
    assert throttle.admit("bulk", 0.0) == 0
    assert throttle.admit("bulk", 1.0) is None
    assert throttle.admit("bulk", 9.9) is None
    assert throttle.admit("normal", 2.0) == 0
    assert throttle.admit("bulk", 10.0) == 2
    assert throttle.admit("bulk", 10.5) is None


def test_log_throttle_memory_is_bounded() -> None:
    """Past MAX_THROTTLE_KEYS, stale keys are dropped and fresh overflow keys pass untracked."""
    throttle = LogThrottle(interval=10.0)
    for i in range(logs.MAX_THROTTLE_KEYS):
        throttle.admit(f"k{i}", 0.0)
    assert throttle.admit("overflow", 1.0) == 0
    assert throttle.admit("overflow", 1.0) == 0
    assert throttle.admit("later", 20.0) == 0
    assert throttle.admit("later", 21.0) is None


_secret_text = st.from_regex(re.compile(r"tok_[A-Za-z0-9]{8,24}"), fullmatch=True)
_leaf = st.one_of(st.integers(), st.text(max_size=8), st.none())


@settings(max_examples=60, deadline=None)
@given(
    secret=_secret_text,
    shape=st.recursive(
        _leaf,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)
        ),
        max_leaves=10,
    ),
    prefix=st.text(max_size=5),
)
def test_secret_never_reaches_the_stream(secret: str, shape: Any, prefix: str) -> None:
    """Property: a configured secret embedded anywhere in a nested value never appears."""
    stream = io.StringIO()
    configure_logging(fmt="json", secrets=[secret], stream=stream)
    get_logger("t").info("p.event", payload=[shape, {"deep": [f"{prefix}{secret}!"]}])
    text = stream.getvalue()
    assert secret not in text
    assert lines(stream)[0]["payload"][1]["deep"] == [f"{prefix}{REDACTED}!"]
