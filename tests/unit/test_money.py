"""Money parsing: exact, strict, and every refusal says why."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.money import (
    MoneyError,
    check_fits_minor_unit,
    format_amount,
    parse_amount,
    parse_currency,
    to_minor_units,
)

amounts = st.decimals(
    min_value=Decimal("0.000001"),
    max_value=Decimal("99999999999999.999999"),
    places=6,
    allow_nan=False,
    allow_infinity=False,
)


@given(amounts)
def test_every_representable_amount_round_trips_exactly(amount: Decimal) -> None:
    assert parse_amount(format(amount, "f")) == amount


@given(st.text(max_size=40))
def test_arbitrary_text_either_parses_positive_or_raises_money_error(text: str) -> None:
    try:
        value = parse_amount(text)
    except MoneyError as exc:
        assert str(exc)
    else:
        assert value > 0 and value.is_finite()
        assert -value.as_tuple().exponent <= 6  # type: ignore[operator]


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_json_numbers_are_refused(value: float) -> None:
    with pytest.raises(MoneyError, match="decimal string"):
        parse_amount(value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("0", "greater than zero"),
        ("0.000000", "greater than zero"),
        ("-1", "positive"),
        ("+1", "look like"),
        ("1.0000001", "more than 6 decimal places"),
        ("1e3", "look like"),
        ("NaN", "finite"),
        ("-Infinity", "finite"),
        ("inf", "finite"),
        (" 1", "look like"),
        ("1,5", "look like"),
        ("١٢", "look like"),
        ("123456789012345", "too large"),
        (".5", "look like"),
        ("5.", "look like"),
    ],
)
def test_refusals_name_the_reason(text: str, reason: str) -> None:
    with pytest.raises(MoneyError, match=reason):
        parse_amount(text)


def test_booleans_are_not_numbers_either() -> None:
    with pytest.raises(MoneyError):
        parse_amount(True)


@pytest.mark.parametrize("code", ["usd", "US", "USDD", "", None, 840, "U$D"])
def test_currency_codes_are_three_capitals(code: object) -> None:
    with pytest.raises(MoneyError):
        parse_currency(code)


def test_minor_units() -> None:
    assert to_minor_units(Decimal("20.00"), "USD") == 2000
    assert to_minor_units(Decimal("500"), "JPY") == 500
    assert to_minor_units(Decimal("1.234"), "KWD") == 1234
    with pytest.raises(MoneyError, match="minor unit"):
        check_fits_minor_unit(Decimal("20.001"), "USD")
    with pytest.raises(MoneyError, match="minor unit"):
        check_fits_minor_unit(Decimal("1.5"), "JPY")


def test_format_amount_is_plain_text_with_at_least_two_decimals() -> None:
    assert format_amount(Decimal("110.000000")) == "110.00"
    assert format_amount(Decimal("0.000123")) == "0.000123"
    assert format_amount(Decimal("1E+3")) == "1000.00"
    assert format_amount(Decimal("-2.5")) == "-2.50"
