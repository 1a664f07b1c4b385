"""Amounts typed into the pages' forms become integers in the smallest unit exactly, or a sentence why not."""

from __future__ import annotations

import pytest

from prepaid.web.render import parse_amount


@pytest.mark.parametrize(
    ("typed", "digits", "units"),
    [
        ("12", 0, 12),
        ("1,299.50", 2, 129_950),
        ("12.5", 2, 1_250),
        ("0.000001", 6, 1),
        ("1_000", 0, 1_000),
        ("-3.25", 2, -325),
        ("0", 2, 0),
        ("7.00", 0, 7),
    ],
)
def test_typed_amounts_become_exact_units(typed: str, digits: int, units: int) -> None:
    assert parse_amount(typed, digits) == units


@pytest.mark.parametrize(
    ("typed", "digits"),
    [("12.345", 2), ("0.5", 0), ("", 2), ("abc", 2), ("1e999999999", 2), ("١٢", 0), ("nan", 2), ("inf", 0)],
)
def test_anything_else_is_refused_with_a_reason(typed: str, digits: int) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_amount(typed, digits)
