"""Money parsing: exact, strict, and every refusal says why."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.money import (
    _MINOR_UNITS,
    MoneyError,
    check_fits_minor_unit,
    format_amount,
    minor_units,
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


# ISO 4217 (list one of the maintenance agency), written out here so that a deleted or changed
# entry of the ledger's table fails: every code whose minor unit is not 2, plus MGA (2 in ISO,
# zero-decimal at Stripe: the ledger keeps ISO).
ISO_MINOR_UNITS = {
    "BHD": 3,
    "BIF": 0,
    "CLF": 4,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "IQD": 3,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "KWD": 3,
    "LYD": 3,
    "MGA": 2,
    "OMR": 3,
    "PYG": 0,
    "RWF": 0,
    "TND": 3,
    "UGX": 0,
    "UYI": 0,
    "UYW": 4,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
}


def test_the_iso_table_lists_exactly_these_currencies() -> None:
    assert dict(_MINOR_UNITS) == ISO_MINOR_UNITS


@pytest.mark.parametrize(("currency", "units"), sorted(ISO_MINOR_UNITS.items()))
def test_every_iso_entry_on_both_sides(currency: str, units: int) -> None:
    assert minor_units(currency) == units
    finest = Decimal(1).scaleb(-units)  # 1, 0.01, 0.001, 0.0001
    check_fits_minor_unit(Decimal(7) + finest, currency)
    assert to_minor_units(Decimal(7) + finest, currency) == 7 * 10**units + 1
    with pytest.raises(MoneyError, match="minor unit"):
        check_fits_minor_unit(Decimal(7) + finest / 10, currency)


@pytest.mark.parametrize("currency", ["USD", "EUR", "HUF", "TWD", "XYZ"])
def test_unlisted_currencies_have_two_decimals(currency: str) -> None:
    assert minor_units(currency) == 2
    assert to_minor_units(Decimal("25.50"), currency) == 2550
    with pytest.raises(MoneyError, match="minor unit"):
        check_fits_minor_unit(Decimal("25.501"), currency)


def test_iso_semantics_not_stripe_semantics() -> None:
    # The ledger's units, not the card charge's (common/gateway/currencies.py differs for these).
    assert (minor_units("ISK"), minor_units("UGX"), minor_units("MGA")) == (0, 0, 2)
    assert to_minor_units(Decimal("100"), "ISK") == 100
    assert to_minor_units(Decimal("1000.50"), "MGA") == 100050
