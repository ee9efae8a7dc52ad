"""Upstream values and URL safety: what a call to an upstream is, before and after the wire.

Holds the settings (``TimeoutClasses``, ``UpstreamSettings``), the request and response values
(``HttpRequest``, ``NO_JSON``, ``HttpResponse`` with its Retry-After parsing), the URL guards
(``render_path``, ``join_url``: no caller value can leave the upstream's base URL) and
``MAX_BODY_BYTES``. No awaits, no I/O. It imports httpx for URL parsing only; with
``claykiln.actors.upstream`` (the executor, which owns the clients and translates httpx errors)
it forms the upstream edge, the only modules that import httpx.
"""

from __future__ import annotations

import email.utils
import functools
import json as jsonlib
import re
import time
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs
import httpx

from claykiln.actors.errors import BadRequestRefusal

__all__ = [
    "DELAY_SECONDS",
    "HTTP_CLIENTS",
    "MAX_BODY_BYTES",
    "NO_JSON",
    "PLACEHOLDER",
    "HttpRequest",
    "HttpResponse",
    "TimeoutClasses",
    "UpstreamSettings",
    "join_url",
    "render_path",
]

MAX_BODY_BYTES: Final = 10 * 1024 * 1024
MAX_URL_CHARS: Final = 65_536  # httpx's bound on a URL and on each of its parts
_WORST_ENCODING: Final = 9  # percent-encoding turns one character into at most 9 (3 x %XX)
HTTP_CLIENTS: Final = ("h11", "httpx")  # UpstreamSettings.http_client: see actors/upstream.py
JOIN_CACHE_SIZE: Final = 4096  # distinct (base_url, path) pairs kept parsed
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
DELAY_SECONDS = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,9})?")


class _NoJson:
    def __repr__(self) -> str:
        return "NO_JSON"


NO_JSON: Final[Any] = _NoJson()


def _frozen_headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen
class TimeoutClasses:
    """The timeout hierarchy in seconds: an operation names one class (or gives seconds)."""

    connect: float = 5.0
    request: float = 30.0
    upload: float = 120.0
    long_poll: float = 300.0


def _check_base_url(_inst: object, _attr: object, value: str) -> None:
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        msg = f"upstream base_url must be an http(s) URL with a host, got {value!r}"
        raise ValueError(msg)
    if url.query or url.fragment or url.userinfo:
        msg = f"upstream base_url must not carry a query, fragment or user info: {url.host!r}"
        raise ValueError(msg)


@attrs.frozen
class UpstreamSettings:
    """One upstream: where it lives and how to authenticate. ``credential`` is the secret value
    injected as the ``auth_header``; it is never logged and left out of the repr.
    ``http_client``: ``"h11"`` (``Http11Connection``, the default) or ``"httpx"`` (one
    single-connection ``httpx.AsyncClient`` per connection slot)."""

    name: str
    base_url: str = attrs.field(validator=_check_base_url)
    auth_header: str | None = None
    credential: str | None = attrs.field(default=None, repr=False)
    timeouts: TimeoutClasses = attrs.field(factory=TimeoutClasses)
    max_connections: int = 64
    default_headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_headers, hash=False
    )
    http_client: str = attrs.field(default="h11", validator=attrs.validators.in_(HTTP_CLIENTS))

    def __attrs_post_init__(self) -> None:
        if (self.auth_header is None) != (self.credential is None):
            msg = f"upstream {self.name}: set both auth_header and its credential, or neither"
            raise ValueError(msg)
        if self.credential is not None and ("\r" in self.credential or "\n" in self.credential):
            msg = f"upstream {self.name}: the credential contains a line break; fix the secret file"
            raise ValueError(msg)
        if self.credential is not None and not self.credential.isascii():
            msg = f"upstream {self.name}: the credential is not ASCII text; fix the secret file"
            raise ValueError(msg)
        for header, value in self.default_headers.items():
            if not (header.isascii() and value.isascii()):
                msg = f"upstream {self.name}: default header {header!r} must be ASCII"
                raise ValueError(msg)
        if self.max_connections < 1:
            msg = f"upstream {self.name}: max_connections must be >= 1"
            raise ValueError(msg)


@attrs.frozen
class HttpRequest:
    """A request relative to the upstream's base_url; ``path`` is rendered (see render_path).
    ``json`` (any JSON value, ``None`` included) and ``content`` are mutually exclusive."""

    method: str
    path: str
    query: Mapping[str, str] | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_headers, hash=False)
    json: Any = NO_JSON
    content: bytes | None = None

    def __attrs_post_init__(self) -> None:
        if self.json is not NO_JSON and self.content is not None:
            msg = "give a request json or content, not both"
            raise BadRequestRefusal(msg)
        query = self.query
        if query and sum(len(k) + len(v) + 2 for k, v in query.items()) * _WORST_ENCODING > (
            MAX_URL_CHARS
        ):
            size = len(str(httpx.QueryParams(query)))
            if size > MAX_URL_CHARS:
                raise _too_long("query", size)


@attrs.frozen
class HttpResponse:
    """A fully read response: ``headers`` has lower-case names (repeats joined by ", ").
    ``decoded``: the body as ``decode_body`` (actors/call.py) returns it, once the pipeline
    decoded it (``NO_JSON`` until then)."""

    status: int
    headers: dict[str, str] = attrs.field(hash=False)
    body: bytes
    duration: float
    decoded: Any = attrs.field(default=NO_JSON, eq=False, hash=False, repr=False)

    def retry_after(self, now: float | None = None) -> float | None:
        """Seconds from Retry-After (delay-seconds or an HTTP date, against wall time ``now``,
        default ``time.time()``); negative values become 0; absent or unparseable -> None."""
        raw = self.headers.get("retry-after")
        if raw is None:
            return None
        raw = raw.strip()
        if DELAY_SECONDS.fullmatch(raw):
            seconds = float(raw)
        else:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                return None
            seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)

    def json(self) -> Any:
        """The body decoded as JSON (raises ValueError when it is not)."""
        return jsonlib.loads(self.body)


RENDERED_PATHS: Final = 1024  # paths ``render_path`` remembers (then it starts over)
_rendered: dict[Any, str] = {}  # (template, *params.items()), or the template alone


def render_path(template: str, params: Mapping[str, Any]) -> str:
    """Fill ``{name}`` placeholders with percent-encoded values (``quote(str(v), safe="")``), so
    no value can add a path segment, a query, a fragment, user info or another host.

    Raises BadRequestRefusal naming the parameter when one is missing, unused, empty, ``None``,
    ``.`` or ``..``, when the template has a stray brace, and (naming the limit, not the value)
    when the rendered path is longer than MAX_URL_CHARS.

    Remembered for string parameters (``RENDERED_PATHS`` of them; a webhook id or a table id
    repeats call after call, and a keyed call renders its path twice): three regex passes,
    ~4 us, become a dict lookup. A refusal is not remembered: it raises.
    """
    key: Any = template
    if params:
        if not all(type(value) is str for value in params.values()):
            return _render_path(template, params)
        key = (template, *params.items())
    path = _rendered.get(key)
    if path is None:
        path = _render_path(template, params)
        if len(_rendered) >= RENDERED_PATHS:
            _rendered.clear()
        _rendered[key] = path
    return path


def _render_path(template: str, params: Mapping[str, Any]) -> str:
    names = PLACEHOLDER.findall(template)
    rest = PLACEHOLDER.sub("", template)
    if "{" in rest or "}" in rest:
        msg = f"path template {template!r} has a brace that is not a {{name}} placeholder"
        raise BadRequestRefusal(msg)
    unused = sorted(set(params) - set(names))
    if unused:
        msg = f"unexpected path parameter(s) {', '.join(unused)} for {template!r}"
        raise BadRequestRefusal(msg, details={"params": unused})

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            msg = f"missing path parameter {name!r} for {template!r}"
            raise BadRequestRefusal(msg, details={"param": name})
        value = params[name]
        text = "" if value is None else str(value)
        if text in ("", ".", ".."):
            msg = f"path parameter {name!r} must not be empty, '.' or '..'"
            raise BadRequestRefusal(msg, details={"param": name})
        try:
            return urllib.parse.quote(text, safe="")
        except UnicodeEncodeError:
            msg = f"path parameter {name!r} is not valid Unicode text"
            raise BadRequestRefusal(msg, details={"param": name}) from None

    path = PLACEHOLDER.sub(fill, template)
    if len(path) > MAX_URL_CHARS:
        raise _too_long("path", len(path))
    return path


def _too_long(part: str, size: int) -> BadRequestRefusal:
    """The refusal of a URL part over MAX_URL_CHARS; it names the sizes, never the values."""
    msg = (
        f"call: the request's {part} would be {size} characters long after percent-encoding; "
        f"the limit is {MAX_URL_CHARS}: send large values in the body"
    )
    return BadRequestRefusal(msg, details={"limit": MAX_URL_CHARS, "size": size, "part": part})


@functools.lru_cache(maxsize=JOIN_CACHE_SIZE)
def join_url(base_url: str, path: str) -> httpx.URL:
    """``base_url`` + ``path`` as one URL, checked to keep the base's scheme, host, port and path
    prefix and to hold no dot segment (encoded or not); BadRequestRefusal otherwise.

    Pure and cached (httpx.URL is immutable; parsing two URLs costs ~50 us per call, and a
    daemon calls the same few paths over and over). A refusal is not cached: it raises.
    """
    base = httpx.URL(base_url)
    joined = base_url.rstrip("/") + "/" + path.lstrip("/")
    if len(joined) > MAX_URL_CHARS:
        raise _too_long("URL", len(joined))
    url = httpx.URL(joined)
    prefix = base.raw_path.rstrip(b"/") + b"/"
    raw_path = url.raw_path.partition(b"?")[0]
    same_origin = (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)
    if not same_origin or not raw_path.startswith(prefix) or _has_dot_segment(raw_path):
        msg = f"path {path!r} would leave the upstream's base URL"
        raise BadRequestRefusal(msg)
    return url


def _has_dot_segment(raw_path: bytes) -> bool:
    if b"%2e" not in raw_path.lower() and b"/." not in raw_path:
        return False
    return any(urllib.parse.unquote_to_bytes(seg) in (b".", b"..") for seg in raw_path.split(b"/"))
