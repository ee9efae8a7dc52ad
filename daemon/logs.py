"""Structured logging for the daemon: JSON lines under systemd, console rendering on a TTY.

Contract (docs/alerting.md reads these fields; change them only on purpose):

- every line carries ``timestamp`` (ISO 8601, UTC, ``Z`` suffix), ``level``
  (debug | info | warning | error | critical), ``event`` (a stable dotted name such as
  ``breaker.opened``) and ``logger`` (the module name given to :func:`get_logger`);
- per-connection context bound with ``structlog.contextvars.bind_contextvars`` (peer pid/uid,
  conn id, msgid) is merged into every line logged inside that context;
- alerts (:func:`alert`) carry ``alert=true`` and ``severity`` (critical | warning | info) and
  are emitted whatever the configured level, so an alert (or its all-clear) is never filtered
  (``get_logger`` and ``alert`` live in ``claykiln.actors.log``, which actors can import, and
  are re-exported here);
- tracebacks never render local variables (structlog's ``dict_tracebacks`` does by default and
  leaked a token once); in JSON they are a list of frame dicts under ``exception``;
- under journald (``JOURNAL_STREAM`` names the stream written to), every line starts with its
  syslog priority, ``<N>`` (systemd's ``SyslogLevelPrefix=``, on by default), chosen so that
  ``journalctl -p warning`` shows exactly the alerts: an alert's priority is its severity's
  (critical 2, warning 4, info 4: an all-clear shows beside what it clears), any other line's
  its level's but never above notice (debug 7, info 6, warning and error 5). The JSON ``level``
  field is unchanged (``journal_priority``);
- secrets never reach the stream: any configured secret value found in any string (nested dicts,
  lists, tuples, bytes, exception text included) becomes ``[REDACTED]``, values under keys named
  like credentials (``authorization``, ``api_key``, ``x-clay-webhook-auth``, ``password``,
  ``*_token`` ...) are replaced whole, and the rendered line is scrubbed once more as a last line
  of defence (objects rendered through ``repr``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TextIO, cast

import attrs
import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from claykiln.actors.log import alert, get_logger

__all__ = [
    "REDACTED",
    "LogThrottle",
    "add_secrets",
    "alert",
    "configure_logging",
    "get_logger",
    "journal_priority",
    "journal_stream",
    "set_event_sink",
    "set_secrets",
]

REDACTED = "[REDACTED]"
LEVELS: Mapping[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# Exact key names (lower-cased, "_" read as "-") whose values are always redacted.
SENSITIVE_KEYS = frozenset(
    {
        "auth",
        "authorization",
        "proxy-authorization",
        "api-key",
        "apikey",
        "x-api-key",
        "clay-api-key",
        "x-clay-webhook-auth",
        "credential",
        "credentials",
        "password",
        "passwd",
        "secret",
        "token",
        "cookie",
        "set-cookie",
    }
)
# Key suffixes that mark a credential: "webhook_token", "db_password", "client_secret".
SENSITIVE_SUFFIXES = ("-token", "-password", "-secret", "-api-key", "-auth", "-credential")
MAX_REDACT_DEPTH = 16
HEAD_KEYS = ("timestamp", "level", "event", "logger")
MAX_THROTTLE_KEYS = 1024


@attrs.frozen
class _Secrets:
    """The secret values in force, compiled once per update into one alternation."""

    values: frozenset[str]
    pattern: re.Pattern[str] | None
    bytes_pattern: re.Pattern[bytes] | None

    @classmethod
    def from_values(cls, values: Iterable[str]) -> _Secrets:
        """Strip each value (credential files end with a newline) and drop empty ones."""
        clean = frozenset(v.strip() for v in values if v and v.strip())
        if not clean:
            return cls(frozenset(), None, None)
        # Longest first, so a secret that contains another is replaced whole. The JSON-escaped
        # forms let the last-line scrub catch a secret that reached the line via repr().
        forms = set(clean) | {json.dumps(v)[1:-1] for v in clean}
        ordered = sorted(forms, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(v) for v in ordered))
        raw = sorted((v.encode() for v in clean), key=len, reverse=True)
        bytes_pattern = re.compile(b"|".join(re.escape(v) for v in raw))
        return cls(clean, pattern, bytes_pattern)


_secrets = _Secrets.from_values(())


def set_secrets(values: Iterable[str]) -> None:
    """Replace the set of secret values to redact (after a config reload or credential load).

    Values are stripped; empty values are ignored. Takes effect for the next line logged.
    """
    global _secrets
    _secrets = _Secrets.from_values(values)


def add_secrets(values: Iterable[str]) -> None:
    """Add secret values to the set in force (see :func:`set_secrets`)."""
    set_secrets(_secrets.values | frozenset(values))


def _is_sensitive_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    name = key.lower().replace("_", "-")
    return name in SENSITIVE_KEYS or name.endswith(SENSITIVE_SUFFIXES)


def _scrub(value: Any, secrets: _Secrets, depth: int = 0) -> Any:
    """Return ``value`` with every secret occurrence and every sensitive-keyed value redacted."""
    if isinstance(value, str):
        return secrets.pattern.sub(REDACTED, value) if secrets.pattern else value
    if isinstance(value, dict):
        if depth >= MAX_REDACT_DEPTH:
            return _scrub(repr(value), secrets)
        return {
            k: REDACTED if _is_sensitive_key(k) and v is not None else _scrub(v, secrets, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        if depth >= MAX_REDACT_DEPTH:
            return _scrub(repr(value), secrets)
        items = [
            # A (name, value) pair, as in httpx header lists.
            (item[0], REDACTED)
            if isinstance(item, tuple) and len(item) == 2 and _is_sensitive_key(item[0])
            else _scrub(item, secrets, depth + 1)
            for item in value
        ]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, bytes | bytearray):
        if secrets.bytes_pattern:
            return secrets.bytes_pattern.sub(REDACTED.encode(), bytes(value))
        return value
    return value


def redact_processor(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact secrets and sensitive keys anywhere in the event dict.

    Also puts ``timestamp``, ``level``, ``event`` and ``logger`` first, for people reading lines.
    """
    ordered = {k: event_dict[k] for k in HEAD_KEYS if k in event_dict}
    ordered.update(event_dict)
    scrubbed: EventDict = _scrub(ordered, _secrets)
    return scrubbed


@attrs.frozen
class _ScrubbedRenderer:
    """Wraps the final renderer and scrubs the rendered line (catches secrets inside reprs)."""

    inner: Processor

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        line = cast(str, self.inner(logger, name, event_dict))
        pattern = _secrets.pattern
        return pattern.sub(REDACTED, line) if pattern else line


# Journal priorities (syslog: 2 crit, 3 err, 4 warning, 5 notice, 6 info, 7 debug): every
# alert at warning or above, every other line below it (see the module docstring).
ALERT_PRIORITY: Mapping[str, int] = {"critical": 2, "warning": 4, "info": 4}
LINE_PRIORITY: Mapping[str, int] = {"debug": 7, "info": 6, "warning": 5, "error": 5, "critical": 5}
NOTICE = 5


def journal_priority(event_dict: Mapping[str, Any]) -> int:
    """The syslog priority of a line under journald: an alert's severity's, else its level's
    capped at notice, so ``journalctl -p warning`` selects exactly the alerts."""
    if event_dict.get("alert") is True:
        return ALERT_PRIORITY.get(str(event_dict.get("severity")), 4)
    return LINE_PRIORITY.get(str(event_dict.get("level")), NOTICE)


def journal_stream(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Is ``stream`` connected to journald? True when ``JOURNAL_STREAM`` (``DEVICE:INODE``,
    set by systemd for a service's stdout/stderr) names the file ``stream`` writes to."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (AttributeError, OSError, ValueError):
        return False


@attrs.frozen
class _JournalPrefix:
    """Wraps the final renderer: ``<N>`` before the line (``journal_priority``)."""

    inner: Processor

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        line = cast(str, self.inner(logger, name, event_dict))
        return f"<{journal_priority(event_dict)}>{line}"


# The event tap (``set_event_sink``): subscribers of ``subscribe`` get these lines as events.
EventSink = Callable[[str, EventDict], None]
_event_sink: EventSink | None = None
_event_families: frozenset[str] = frozenset()


def set_event_sink(sink: EventSink | None, families: Iterable[str] = ()) -> None:
    """Hand every line whose event family (``breaker`` of ``breaker.opened``) is in ``families``,
    and every alert, to ``sink(level, event_dict)`` (None: stop). The event hub
    (``claykiln.daemon.events``) sets it while it runs.

    The tap is the first processor, ahead of the level filter, so the configured log level never
    changes what subscribers see; the dict it gets is a scrubbed copy (secrets redacted, as in
    the log). One dict lookup per line when the event is not wanted; a sink that raises loses
    that event, never the log line.
    """
    global _event_sink, _event_families
    _event_families = frozenset(families)
    _event_sink = sink


def _event_tap(_logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    sink = _event_sink
    if sink is None:
        return event_dict
    event = event_dict.get("event")
    if event_dict.get("alert") is True or (
        isinstance(event, str) and event.partition(".")[0] in _event_families
    ):
        try:
            sink(method, _scrub(dict(event_dict), _secrets))
        except Exception:  # the log line matters more than one subscriber event
            pass
    return event_dict


@attrs.frozen
class _LevelGate:
    """Drops non-alert lines below ``min_level``; alerts always pass (see module docstring)."""

    min_level: int

    def __call__(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        level = structlog.processors.NAME_TO_LEVEL.get(method, 100)
        if level < self.min_level and not event_dict.get("alert"):
            raise structlog.DropEvent
        return event_dict


def configure_logging(
    *,
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO = sys.stderr,
    journal: bool | None = None,
) -> None:
    """(Re)configure structlog for the whole process; safe to call again (tests, reload).

    ``fmt="auto"`` renders for a console when ``stream`` is a TTY and JSON lines otherwise.
    ``journal``: prefix each line with its syslog priority (None: when ``journal_stream``).
    ``level`` is one of debug | info | warning | error; lines below it are dropped except alerts.
    ``secrets`` replaces the redaction set (as :func:`set_secrets`).
    Raises ValueError for an unknown ``fmt`` or ``level``.
    """
    if level not in LEVELS:
        msg = f"unknown log level {level!r}: use one of {', '.join(LEVELS)}"
        raise ValueError(msg)
    if fmt not in ("auto", "json", "console"):
        msg = f"unknown log format {fmt!r}: use auto, json or console"
        raise ValueError(msg)
    is_tty = _isatty(stream)
    console = fmt == "console" or (fmt == "auto" and is_tty)
    set_secrets(secrets)
    min_level = LEVELS[level]
    processors: list[Processor] = [_event_tap]
    if min_level > LEVELS["info"]:
        processors.append(_LevelGate(min_level))
    processors += [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    if console:
        # Plain Python traceback text (never locals), rendered before redaction so it is scrubbed.
        processors.append(structlog.processors.ExceptionRenderer())
        renderer: Processor = structlog.dev.ConsoleRenderer(
            colors=is_tty, exception_formatter=structlog.dev.plain_traceback
        )
    else:
        processors.append(
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        )
        renderer = structlog.processors.JSONRenderer()
    final: Processor = _ScrubbedRenderer(renderer)
    if journal if journal is not None else journal_stream(stream):
        final = _JournalPrefix(final)
    processors += [redact_processor, final]
    structlog.configure(
        processors=processors,
        # Alerts below the configured level must still reach the gate above, so the cheap
        # filter never drops info-level calls.
        wrapper_class=structlog.make_filtering_bound_logger(min(min_level, LEVELS["info"])),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        # Off, so reconfiguring (tests, a reload that changes the level) reaches module loggers.
        cache_logger_on_first_use=False,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@attrs.define
class LogThrottle:
    """Lets one line per key through per ``interval`` seconds and counts the rest.

    For events that can come in storms (``lane.rejected``): the caller asks :meth:`admit` with
    the current time (``trio.current_time()``) and logs only when it returns a count, adding
    ``suppressed=count``. Owned by one task. Memory is bounded by ``MAX_THROTTLE_KEYS``; past it,
    stale keys are dropped and a new key that still does not fit is admitted untracked.
    """

    interval: float
    _last: dict[str, float] = attrs.field(factory=dict)
    _suppressed: dict[str, int] = attrs.field(factory=dict)

    def admit(self, key: str, now: float) -> int | None:
        """None to suppress this line; else the number of lines suppressed since the last one."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= MAX_THROTTLE_KEYS:
            for old in [k for k, t in self._last.items() if now - t >= self.interval]:
                del self._last[old]
                self._suppressed.pop(old, None)
            if len(self._last) >= MAX_THROTTLE_KEYS:
                return 0
        self._last[key] = now
        return self._suppressed.pop(key, 0)
