"""The argument checks every method family shares: strict names, typed maps."""

from __future__ import annotations

import pytest

from claykiln.actors.errors import BadRequestRefusal
from claykiln.daemon.methods.args import check_names, str_map


def test_check_names_names_the_unknown_and_the_allowed_arguments() -> None:
    """Unknown names are refused, sorted, with the allowed ones listed."""
    check_names("m", {"a": 1}, frozenset({"a", "b"}))
    with pytest.raises(BadRequestRefusal, match=r"m: unknown argument\(s\) x, z; allowed: a, b"):
        check_names("m", {"z": 1, "a": 1, "x": 2}, frozenset({"a", "b"}))


def test_str_map_accepts_none_and_string_maps_and_refuses_the_rest() -> None:
    """None is {}; scalars are allowed only with ``scalars``; non-string keys never."""
    assert str_map("m", "headers", None) == {}
    assert str_map("m", "headers", {"a": "b"}) == {"a": "b"}
    assert str_map("m", "query", {"n": 1, "f": True}, scalars=True) == {"n": 1, "f": True}
    with pytest.raises(
        BadRequestRefusal, match="m: headers must be a map of string keys to strings"
    ):
        str_map("m", "headers", {"n": 1})
    with pytest.raises(BadRequestRefusal, match="to strings, numbers or booleans"):
        str_map("m", "query", {1: "x"}, scalars=True)
    with pytest.raises(BadRequestRefusal, match="headers must be a map"):
        str_map("m", "headers", ["a", "b"])
