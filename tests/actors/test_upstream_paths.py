"""Pure parts of the upstream executor: path rendering, URL joining, Retry-After, settings."""

from __future__ import annotations

import email.utils
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors import upstream_http
from claykiln.actors.errors import BadRequestRefusal
from claykiln.actors.upstream import (
    HttpRequest,
    HttpResponse,
    UpstreamSettings,
    join_url,
    render_path,
)

BASE = "https://api.clay.com/v3"
ATTACKS = [
    "../../evil",
    "..%2F..%2Fevil",
    "@evil.com",
    "//evil.com",
    "http://evil",
    "https://evil.com/x",
    "%2F",
    "%2e%2e",
    "?x=1",
    "#frag",
    "a/b",
    "\\evil",
    "évil/ü",
    "x y",
    "user:pass@evil.com:443",
]


@pytest.mark.parametrize("value", ATTACKS)
def test_attack_values_stay_one_encoded_segment(value: str) -> None:
    """A hostile path value becomes one percent-encoded segment on the base host and path."""
    path = render_path("/tables/{table_id}/rows", {"table_id": value})
    url = join_url(BASE, path)
    encoded = urllib.parse.quote(value, safe="")
    assert (url.scheme, url.host, url.port) == ("https", "api.clay.com", None)
    assert url.raw_path == f"/v3/tables/{encoded}/rows".encode()
    assert url.query == b""


@given(st.text(min_size=1).filter(lambda s: s not in (".", "..")))
def test_any_value_keeps_host_and_segment(value: str) -> None:
    """Property: no value changes the host or adds a path segment, query or fragment."""
    url = join_url(BASE, render_path("/t/{v}", {"v": value}))
    assert url.host == "api.clay.com"
    assert url.raw_path.count(b"/") == 3
    assert url.query == b""
    assert url.fragment == ""


@pytest.mark.parametrize("value", ["", ".", "..", None, "\udc80"])
def test_empty_and_dot_values_rejected(value: object) -> None:
    """Empty, None, '.', '..' and lone-surrogate values are refused with BadRequestRefusal."""
    with pytest.raises(BadRequestRefusal, match="table_id"):
        render_path("/tables/{table_id}", {"table_id": value})


def test_missing_param_named() -> None:
    """A missing parameter raises BadRequestRefusal naming it."""
    with pytest.raises(BadRequestRefusal, match="'row'") as info:
        render_path("/t/{table}/{row}", {"table": "a"})
    assert info.value.details == {"param": "row"}


def test_unused_param_rejected() -> None:
    """A parameter the template does not use is refused, not silently dropped."""
    with pytest.raises(BadRequestRefusal, match="extra"):
        render_path("/t/{table}", {"table": "a", "extra": "b"})


def test_stray_brace_rejected() -> None:
    """A template with a brace that is not a placeholder is refused."""
    with pytest.raises(BadRequestRefusal, match="brace"):
        render_path("/t/{table", {})


def test_non_string_values_rendered() -> None:
    """Integers render with str()."""
    assert render_path("/t/{n}/{m}", {"n": 42, "m": "x"}) == "/t/42/x"


def test_rendered_paths_are_remembered_and_refusals_are_not() -> None:
    """A path of string parameters is rendered once and then looked up (the same object
    comes back); a refusal raises every time; the memory is bounded."""
    upstream_http._rendered.clear()
    first = render_path("/sources/webhook/{webhook_id}", {"webhook_id": "wh/1"})
    assert first == "/sources/webhook/wh%2F1"
    assert render_path("/sources/webhook/{webhook_id}", {"webhook_id": "wh/1"}) is first
    assert render_path("/ping", {}) == "/ping"
    for _ in range(2):
        with pytest.raises(BadRequestRefusal, match="must not be empty"):
            render_path("/sources/webhook/{webhook_id}", {"webhook_id": ".."})
        with pytest.raises(BadRequestRefusal, match="missing path parameter"):
            render_path("/sources/webhook/{webhook_id}", {})
    assert len(upstream_http._rendered) == 2
    # Non-string values are rendered each time, never kept under a key that an equal string
    # would share.
    assert render_path("/t/{n}", {"n": 1}) == "/t/1"
    assert render_path("/t/{n}", {"n": True}) == "/t/True"
    assert len(upstream_http._rendered) == 2
    for i in range(upstream_http.RENDERED_PATHS + 5):
        assert render_path("/t/{n}", {"n": str(i)}) == f"/t/{i}"
    assert len(upstream_http._rendered) <= upstream_http.RENDERED_PATHS


@pytest.mark.parametrize(
    "path", ["/../admin", "/%2e%2e/admin", "/a/%2E/b", "//evil.com/x/../../.."]
)
def test_join_refuses_templates_leaving_base_path(path: str) -> None:
    """Defense in depth: a path (e.g. a bad template) climbing out of the base path is refused."""
    with pytest.raises(BadRequestRefusal, match="leave"):
        join_url(BASE, path)


def test_join_keeps_port_and_double_slash() -> None:
    """A leading '//' in a path stays under the base URL (never read as a host)."""
    url = join_url("http://127.0.0.1:8080/", "//evil.com/x")
    assert (url.host, url.port, url.raw_path) == ("127.0.0.1", 8080, b"/evil.com/x")


def _response(retry_after: str | None) -> HttpResponse:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    return HttpResponse(status=429, headers=headers, body=b"", duration=0.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("-3", 0.0), ("0", 0.0), (None, None)],
)
def test_retry_after_seconds(raw: str | None, expected: float | None) -> None:
    """Retry-After in seconds parses; negatives clamp to 0; absent is None."""
    assert _response(raw).retry_after() == expected


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP date is seconds from the given wall time; a past date is 0."""
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 30, usegmt=True)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert _response(future).retry_after(now=now) == pytest.approx(30.0)
    assert _response(past).retry_after(now=now) == 0.0


@pytest.mark.parametrize("raw", ["soon", "", "nan", "inf", "1e9", "12abc", "Mon, 99 Foo 2020"])
def test_retry_after_garbage_is_none(raw: str) -> None:
    """Unparseable Retry-After values give None, never an exception."""
    assert _response(raw).retry_after() is None


@given(st.text())
def test_retry_after_never_raises(raw: str) -> None:
    """Property: any header text parses to None or a finite non-negative number."""
    value = _response(raw).retry_after(now=0.0)
    assert value is None or value >= 0.0


def test_settings_repr_hides_credential() -> None:
    """The credential is not in the settings' repr."""
    settings = UpstreamSettings(
        name="clay", base_url=BASE, auth_header="clay-api-key", credential="sk-live-123456"
    )
    assert "sk-live-123456" not in repr(settings)
    assert "sk-live-123456" not in str(settings)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "ftp://x"}, "http"),
        ({"base_url": "https://x/?q=1"}, "query"),
        ({"base_url": "https://u:p@x/"}, "user info"),
        ({"auth_header": "clay-api-key"}, "both"),
        ({"credential": "sk"}, "both"),
        ({"auth_header": "a", "credential": "sk\r\nx: y"}, "line break"),
        ({"auth_header": "a", "credential": "sk-\u00e9"}, "not ASCII"),
        ({"default_headers": {"x-team": "caf\u00e9"}}, "must be ASCII"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_settings_validation(kwargs: dict[str, object], match: str) -> None:
    """Invalid upstream settings are refused with a message naming the problem."""
    args: dict[str, object] = {"name": "clay", "base_url": BASE, **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        UpstreamSettings(**args)  # type: ignore[arg-type]
    assert "sk\r\n" not in str(info.value)


def test_request_json_and_content_exclusive() -> None:
    """A request cannot carry both json and content."""
    with pytest.raises(BadRequestRefusal):
        HttpRequest("POST", "/x", json={"a": 1}, content=b"x")
