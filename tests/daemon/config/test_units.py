"""Durations and sizes as written in config files."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claykiln.daemon.config.units import (
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("2m30s", 150.0),
        (" 10s ", 10.0),
        ("0s", 0.0),
        (30, 30.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts_units_and_plain_seconds(text: object, seconds: float) -> None:
    """Durations with ms/s/m/h/d units (combinable, largest first) and bare numbers parse."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("30", "needs a unit"),
        ("5x", "units d, h, m, s, ms"),
        ("1m1h", "largest first"),
        ("s", "must be a duration"),
        ("", "must be a duration"),
        ("-1s", "must be a duration"),
        ("1s 2ms", "must be a duration"),
        (-1, "must not be negative"),
        (True, "not a boolean"),
        (math.nan, "not nan"),
        (math.inf, "not inf"),
        ([1], "must be a duration"),
    ],
)
def test_parse_duration_rejects_with_a_reason(value: object, fragment: str) -> None:
    """Bare numeric strings, unknown units, wrong order, negatives and non-numbers are refused."""
    with pytest.raises(UnitError, match=fragment):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("1MiB", 1 << 20),
        ("64MiB", 64 << 20),
        ("4GiB", 4 << 30),
        ("512KiB", 512 << 10),
        ("1TiB", 1 << 40),
        ("1000", 1000),
        ("10B", 10),
        ("1.5GiB", 3 << 29),
        ("2 mib", 2 << 20),
        ("2KB", 2000),
        ("3MB", 3_000_000),
        (4096, 4096),
    ],
)
def test_parse_size_accepts_binary_and_decimal_units(text: object, nbytes: int) -> None:
    """Sizes take B/KiB/MiB/GiB/TiB and KB/MB/GB/TB (any case), bare digits and ints."""
    assert parse_size(text) == nbytes


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1.5B", "whole number of bytes"),
        ("5XB", "units: B, KiB"),
        ("MiB", "must be a size"),
        (-1, "must not be negative"),
        (1.5, "whole bytes"),
        (True, "not a boolean"),
    ],
)
def test_parse_size_rejects_with_a_reason(value: object, fragment: str) -> None:
    """Fractional bytes, unknown units, negatives, floats and booleans are refused."""
    with pytest.raises(UnitError, match=fragment):
        parse_size(value)


def test_unit_error_is_a_value_error() -> None:
    """Callers that catch ValueError also catch UnitError."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (300.0, "5m"), (3600.0, "1h"), (1.5, "1.5s"), (90.0, "90s"), (0.0, "0s")],
)
def test_format_duration_is_short(seconds: float, text: str) -> None:
    """format_duration picks the largest exact unit."""
    assert format_duration(seconds) == text


def test_format_size_uses_exact_binary_units_only() -> None:
    """format_size names exact binary multiples and leaves other sizes in bytes."""
    assert [format_size(n) for n in (1 << 20, 4 << 30, 512 << 10, 1000)] == [
        "1MiB",
        "4GiB",
        "512KiB",
        "1000B",
    ]


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_format_parse_round_trip(millis: int) -> None:
    """parse_duration(format_duration(x)) gives x back for any whole number of milliseconds."""
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_format_parse_round_trip(nbytes: int) -> None:
    """parse_size(format_size(n)) == n for every size."""
    assert parse_size(format_size(nbytes)) == nbytes
