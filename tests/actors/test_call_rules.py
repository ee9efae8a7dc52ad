"""The call's JSON and URL rules (actors/call.py, actors/upstream_http.py): NaN and Infinity
refused with where they are, upstream bodies nested too deep refused as the upstream's fault, URL
parts over httpx's limit refused with the sizes (never the values)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.actors.call import MAX_JSON_DEPTH, check_json, decode_body
from claykiln.actors.errors import BadRequestRefusal, UpstreamRefusal
from claykiln.actors.upstream_http import (
    MAX_URL_CHARS,
    NO_JSON,
    HttpRequest,
    HttpResponse,
    join_url,
    render_path,
)

finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=30,
)


def json_response(body: bytes, status: int = 200) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, body, 0.01)


@given(finite_json)
def test_finite_json_passes(value: Any) -> None:
    """Any JSON value without NaN or Infinity is accepted as it is."""
    check_json(value)
    json.dumps(value, allow_nan=False)


@given(finite_json, st.sampled_from([math.nan, math.inf, -math.inf]))
def test_a_non_finite_float_anywhere_is_refused(value: Any, bad: float) -> None:
    """NaN or Infinity nested anywhere is bad_request."""
    with pytest.raises(BadRequestRefusal, match="NaN or Infinity"):
        check_json({"wrapped": [value, {"deeper": bad}]})


def test_the_refusal_names_the_first_place() -> None:
    """The message says where the first non-finite float is, as a JSON path."""
    with pytest.raises(BadRequestRefusal) as refused:
        check_json({"a": 1, "rows": [{"x": 1.0}, {"x": math.nan}]})
    assert "$.rows[1].x" in refused.value.message


def test_the_refusal_does_not_echo_a_huge_key() -> None:
    """A megabyte map key is cut in the path the message shows."""
    with pytest.raises(BadRequestRefusal) as refused:
        check_json({"k" * 1_000_000: math.inf})
    assert len(refused.value.message) < 400


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 100_000])
def test_an_upstream_body_too_deep_is_upstream_error(depth: int) -> None:
    """A JSON body nested past MAX_JSON_DEPTH (or past Python's decoder) is upstream_error,
    kind body, not retryable, with an excerpt of the body."""
    with pytest.raises(UpstreamRefusal) as refused:
        decode_body(json_response(b"[" * depth + b"]" * depth))
    details = refused.value.details or {}
    assert details["kind"] == "body"
    assert details["retryable"] is False
    assert len(details["body"]) <= 515


def test_an_upstream_body_at_the_depth_limit_is_carried() -> None:
    """MAX_JSON_DEPTH levels exactly decode, and so do ordinary bodies."""
    body = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    value = decode_body(json_response(body))
    assert isinstance(value, list)
    assert decode_body(json_response(b'{"ok": [1, 2]}')) == {"ok": [1, 2]}
    assert decode_body(json_response(b"not json")) == "not json"


def test_a_decoded_body_is_not_decoded_again() -> None:
    """A response the pipeline already decoded returns that value."""
    response = HttpResponse(200, {"content-type": "application/json"}, b"[1]", 0.0, decoded=[2])
    assert decode_body(response) == [2]
    assert HttpResponse(200, {}, b"", 0.0).decoded is NO_JSON


def test_a_path_over_the_url_limit_is_refused_with_sizes() -> None:
    """A rendered path over MAX_URL_CHARS (after percent-encoding) is bad_request naming the
    limit and the size, not the value."""
    with pytest.raises(BadRequestRefusal) as refused:
        render_path("/runs/{id}", {"id": "é" * 20_000})  # 6 characters each once encoded
    assert str(MAX_URL_CHARS) in refused.value.message
    assert refused.value.details == {"limit": MAX_URL_CHARS, "size": 120_006, "part": "path"}
    assert len(render_path("/runs/{id}", {"id": "a" * 60_000})) == 60_006


def test_a_query_over_the_url_limit_is_refused() -> None:
    """A query that encodes past MAX_URL_CHARS is refused when the request is built."""
    with pytest.raises(BadRequestRefusal) as refused:
        HttpRequest("GET", "/x", query={"q": "x" * 70_000})
    assert (refused.value.details or {})["part"] == "query"
    HttpRequest("GET", "/x", query={"q": "x" * 60_000})


def test_a_joined_url_over_the_limit_is_refused() -> None:
    """Base URL plus path over the limit: bad_request, not httpx's InvalidURL."""
    with pytest.raises(BadRequestRefusal, match="URL would be"):
        join_url("http://127.0.0.1:1/" + "b" * 40_000, "/" + "p" * 40_000)
