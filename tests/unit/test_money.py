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


LOOK_LIKE = "amount must look like 12.345678 (digits, optional point), got "


# The whole message: it is what a customer or an operator reads (a rejected usage event, a CLI
# error, a refused setting), so every word of it is part of the product.
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "amount is empty"),
        ("0", "amount must be greater than zero"),
        ("0.000000", "amount must be greater than zero"),
        ("00", "amount must be greater than zero"),
        ("-1", "amount must be positive, got '-1'"),
        ("-0.5", "amount must be positive, got '-0.5'"),
        ("-abc", LOOK_LIKE + "'-abc'"),  # no number at all, whatever its sign
        ("-1e3", LOOK_LIKE + "'-1e3'"),
        ("+1", LOOK_LIKE + "'+1'"),
        ("1.0000001", "amount has more than 6 decimal places: '1.0000001'"),
        ("0.0000001", "amount has more than 6 decimal places: '0.0000001'"),
        ("1e3", LOOK_LIKE + "'1e3'"),
        ("NaN", "amount must be a finite number, got 'NaN'"),
        ("nan", "amount must be a finite number, got 'nan'"),
        ("sNaN", "amount must be a finite number, got 'sNaN'"),
        ("-sNaN", "amount must be a finite number, got '-sNaN'"),
        ("+NaN", "amount must be a finite number, got '+NaN'"),
        (" NaN ", "amount must be a finite number, got ' NaN '"),
        ("-Infinity", "amount must be a finite number, got '-Infinity'"),
        ("+Infinity", "amount must be a finite number, got '+Infinity'"),
        ("inf", "amount must be a finite number, got 'inf'"),
        ("-inf", "amount must be a finite number, got '-inf'"),
        ("INF\n", "amount must be a finite number, got 'INF\\n'"),
        ("nan-", LOOK_LIKE + "'nan-'"),  # a sign goes in front only
        ("infinit", LOOK_LIKE + "'infinit'"),
        (" 1", LOOK_LIKE + "' 1'"),
        ("1 ", LOOK_LIKE + "'1 '"),
        ("1,5", LOOK_LIKE + "'1,5'"),
        ("١٢", LOOK_LIKE + "'١٢'"),
        ("1.2.3", LOOK_LIKE + "'1.2.3'"),
        ("123456789012345", "amount is too large (more than 14 integer digits)"),
        ("100000000000000", "amount is too large (more than 14 integer digits)"),
        ("100000000000000.5", "amount is too large (more than 14 integer digits)"),
        (".5", LOOK_LIKE + "'.5'"),
        ("5.", LOOK_LIKE + "'5.'"),
    ],
)
def test_refusals_name_the_reason(text: str, message: str) -> None:
    with pytest.raises(MoneyError) as exc:
        parse_amount(text)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (1, "a number"),
        (0, "a number"),
        (1.5, "a number"),
        (float("nan"), "a number"),
        (True, "bool"),  # an int to isinstance, but never a number of money
        (False, "bool"),
        (None, "NoneType"),
        (Decimal("1.50"), "Decimal"),
        (b"1.50", "bytes"),
        (["1.50"], "list"),
    ],
)
def test_non_strings_are_refused_naming_what_they_are(value: object, kind: str) -> None:
    with pytest.raises(MoneyError) as exc:
        parse_amount(value)
    assert str(exc.value) == f"amount must be a decimal string, got {kind}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "recharge_amount must be a decimal string, got a number"),
        ("", "recharge_amount is empty"),
        ("inf", "recharge_amount must be a finite number, got 'inf'"),
        ("-1", "recharge_amount must be positive, got '-1'"),
        ("1e3", "recharge_amount must look like 12.345678 (digits, optional point), got '1e3'"),
        ("1.0000001", "recharge_amount has more than 6 decimal places: '1.0000001'"),
        ("123456789012345", "recharge_amount is too large (more than 14 integer digits)"),
        ("0", "recharge_amount must be greater than zero"),
    ],
)
def test_every_refusal_names_the_field(value: object, message: str) -> None:
    with pytest.raises(MoneyError) as exc:
        parse_amount(value, field="recharge_amount")
    assert str(exc.value) == message


# Both sides of each limit: these are accepted, the refusals above are one step beyond.
@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1", "1"),
        ("0.000001", "0.000001"),  # the smallest amount: 6 decimal places
        ("1.000001", "1.000001"),
        ("1.5", "1.5"),
        ("90.09", "90.09"),
        ("99999999999999", "99999999999999"),  # 14 integer digits: the largest
        ("99999999999999.999999", "99999999999999.999999"),
        ("10000000000000", "10000000000000"),
        # Leading zeros are not digits of the amount: 14 significant digits still fit.
        ("0000012345678901234", "12345678901234"),
        ("0012.500000", "12.500000"),  # exact: trailing zeros kept
    ],
)
def test_accepted_amounts_on_each_limit(text: str, parsed: str) -> None:
    amount = parse_amount(text)
    assert type(amount) is Decimal
    assert str(amount) == parsed


def test_booleans_are_not_numbers_either() -> None:
    with pytest.raises(MoneyError):
        parse_amount(True)


CURRENCY_REFUSED = "currency must be a 3-letter ISO 4217 code in capitals, got "


@pytest.mark.parametrize("code", ["usd", "US", "USDD", "", None, 840, "U$D"])
def test_currency_codes_are_three_capitals(code: object) -> None:
    with pytest.raises(MoneyError) as exc:
        parse_currency(code)
    assert str(exc.value) == CURRENCY_REFUSED + repr(code)


# Both ends of A-Z, and the characters just outside them ('@' before A, '[' after Z).
@pytest.mark.parametrize("code", ["AAA", "AED", "USD", "ZAR", "ZZZ"])
def test_any_three_capitals_are_a_currency_code(code: str) -> None:
    assert parse_currency(code) == code


@pytest.mark.parametrize("code", ["@AA", "ZZ[", "US1", "ÄUD", "USD\n"])
def test_just_outside_the_capitals_is_not(code: str) -> None:
    with pytest.raises(MoneyError) as exc:
        parse_currency(code)
    assert str(exc.value) == CURRENCY_REFUSED + repr(code)


def test_minor_units() -> None:
    assert to_minor_units(Decimal("20.00"), "USD") == 2000
    assert to_minor_units(Decimal("500"), "JPY") == 500
    assert to_minor_units(Decimal("1.234"), "KWD") == 1234
    with pytest.raises(MoneyError, match="minor unit"):
        check_fits_minor_unit(Decimal("20.001"), "USD")
    with pytest.raises(MoneyError, match="minor unit"):
        check_fits_minor_unit(Decimal("1.5"), "JPY")


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        (
            "20.001",
            "USD",
            "amount 20.001 USD does not fit the currency's minor unit (2 decimal places)",
        ),
        ("1.5", "JPY", "amount 1.5 JPY does not fit the currency's minor unit (0 decimal places)"),
        (
            "1.2345",
            "KWD",
            "amount 1.2345 KWD does not fit the currency's minor unit (3 decimal places)",
        ),
        (
            "1.00001",
            "CLF",
            "amount 1.00001 CLF does not fit the currency's minor unit (4 decimal places)",
        ),
    ],
)
def test_an_amount_finer_than_the_minor_unit_is_refused_with_the_reason(
    amount: str, currency: str, message: str
) -> None:
    with pytest.raises(MoneyError) as exc:
        check_fits_minor_unit(Decimal(amount), currency)
    assert str(exc.value) == message
    with pytest.raises(MoneyError) as exc:
        to_minor_units(Decimal(amount), currency)
    assert str(exc.value) == message
    with pytest.raises(MoneyError) as exc:
        check_fits_minor_unit(Decimal(amount), currency, field="balance amount")
    assert str(exc.value) == "balance " + message


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("20.00", "USD", 2000),
        ("20", "USD", 2000),
        ("20.010000", "USD", 2001),  # trailing zeros beyond the minor unit are no fraction
        ("0.01", "USD", 1),
        ("500", "JPY", 500),
        ("500.000", "JPY", 500),
        ("1.234", "KWD", 1234),
        ("0.001", "KWD", 1),
        ("1.0001", "CLF", 10001),
    ],
)
def test_to_minor_units_exactly(amount: str, currency: str, minor: int) -> None:
    check_fits_minor_unit(Decimal(amount), currency)  # fits: no exception
    result = to_minor_units(Decimal(amount), currency)
    assert type(result) is int
    assert result == minor


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("110.000000", "110.00"),
        ("0.000123", "0.000123"),
        ("1E+3", "1000.00"),
        ("-2.5", "-2.50"),
        ("2.5", "2.50"),
        ("0.1", "0.10"),
        ("7", "7.00"),
        ("100", "100.00"),
        ("0", "0.00"),
        ("0.000000", "0.00"),
        ("25.00", "25.00"),
        ("1.234", "1.234"),
        ("1.230", "1.23"),
        ("99999999999999.999999", "99999999999999.999999"),
        ("12345678901234", "12345678901234.00"),
    ],
)
def test_format_amount_is_plain_text_with_at_least_two_decimals(amount: str, text: str) -> None:
    assert format_amount(Decimal(amount)) == text


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
