"""Stripe's amount rules (common/gateway/currencies.py): every entry, every special case, both sides
of every boundary.

The expected tables are written out here on purpose, from Stripe's "Supported currencies" page,
rather than read from the module: a deleted or changed entry there must fail here.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.gateway.currencies import (
    STRIPE_MINIMUM_CHARGE,
    STRIPE_MINOR_UNITS,
    charge_refusal,
    stripe_minor_unit,
    to_gateway_amount,
)
from common.money import MoneyError

ZERO_DECIMAL = (
    "BIF",
    "CLP",
    "DJF",
    "GNF",
    "JPY",
    "KMF",
    "KRW",
    "MGA",
    "PYG",
    "RWF",
    "VND",
    "VUV",
    "XAF",
    "XOF",
    "XPF",
)
WHOLE_UNITS_WRITTEN_TWO_DECIMAL = ("ISK", "UGX")
THREE_DECIMAL_LAST_DIGIT_ZERO = ("BHD", "JOD", "KWD", "OMR", "TND")
TWO_DECIMAL_FOR_CHARGES = ("HUF", "TWD")  # zero-decimal for payouts only

# (exponent, step) per currency.
EXPECTED_UNITS = {
    **dict.fromkeys(ZERO_DECIMAL, (0, 1)),
    **dict.fromkeys(WHOLE_UNITS_WRITTEN_TWO_DECIMAL, (2, 100)),
    **dict.fromkeys(THREE_DECIMAL_LAST_DIGIT_ZERO, (3, 10)),
    **dict.fromkeys(TWO_DECIMAL_FOR_CHARGES, (2, 1)),
}

EXPECTED_MINIMUMS = {
    "USD": "0.50",
    "AED": "2.00",
    "ARS": "0.50",
    "AUD": "0.50",
    "BRL": "0.50",
    "CAD": "0.50",
    "CHF": "0.50",
    "COP": "0.50",
    "CZK": "15.00",
    "DKK": "2.50",
    "EUR": "0.50",
    "GBP": "0.30",
    "HKD": "4.00",
    "HUF": "175.00",
    "IDR": "0.50",
    "ILS": "0.50",
    "INR": "0.50",
    "JPY": "50",
    "KRW": "50",
    "MXN": "10",
    "MYR": "2.00",
    "NOK": "3.00",
    "NZD": "0.50",
    "PHP": "0.50",
    "PLN": "2.00",
    "RON": "2.00",
    "RUB": "0.50",
    "SEK": "3.00",
    "SGD": "0.50",
    "THB": "10",
    "ZAR": "0.50",
}


def test_the_tables_list_exactly_the_documented_currencies() -> None:
    assert set(STRIPE_MINOR_UNITS) == set(EXPECTED_UNITS)
    assert set(STRIPE_MINIMUM_CHARGE) == set(EXPECTED_MINIMUMS)


@pytest.mark.parametrize(("currency", "rule"), sorted(EXPECTED_UNITS.items()))
def test_every_minor_unit_entry(currency: str, rule: tuple[int, int]) -> None:
    exponent, step = rule
    unit = stripe_minor_unit(currency)
    assert (unit.exponent, unit.step) == rule
    # The smallest amount Stripe takes is sent as `step`, and the next finer one is refused.
    smallest = Decimal(step).scaleb(-exponent)
    assert to_gateway_amount(smallest * 1000, currency) == step * 1000
    with pytest.raises(MoneyError):
        to_gateway_amount(smallest * 1000 + smallest / 10, currency)


@pytest.mark.parametrize("currency", ZERO_DECIMAL)
def test_zero_decimal_currencies_are_sent_as_is(currency: str) -> None:
    assert to_gateway_amount(Decimal("1000"), currency) == 1000
    assert to_gateway_amount(Decimal("1000.000"), currency) == 1000
    assert to_gateway_amount(Decimal("1"), currency) == 1
    with pytest.raises(MoneyError, match="minor unit"):
        to_gateway_amount(Decimal("1000.5"), currency)


@pytest.mark.parametrize("currency", WHOLE_UNITS_WRITTEN_TWO_DECIMAL)
def test_isk_and_ugx_are_whole_units_written_with_two_decimals(currency: str) -> None:
    assert to_gateway_amount(Decimal("100"), currency) == 10000
    assert to_gateway_amount(Decimal("5"), currency) == 500  # Stripe's own example
    assert charge_refusal(Decimal("100"), currency) is None
    for fraction in ("100.5", "100.01", "0.99"):
        with pytest.raises(MoneyError, match="multiple of 100"):
            to_gateway_amount(Decimal(fraction), currency)
        assert "multiple of 1" in (charge_refusal(Decimal(fraction), currency) or "")
    with pytest.raises(MoneyError, match="minor unit"):
        to_gateway_amount(Decimal("100.001"), currency)


@pytest.mark.parametrize("currency", THREE_DECIMAL_LAST_DIGIT_ZERO)
def test_three_decimal_currencies_end_in_zero(currency: str) -> None:
    assert to_gateway_amount(Decimal("25.000"), currency) == 25000
    assert to_gateway_amount(Decimal("1.230"), currency) == 1230
    assert to_gateway_amount(Decimal("1.23"), currency) == 1230
    assert to_gateway_amount(Decimal("0.010"), currency) == 10
    with pytest.raises(MoneyError, match="multiple of 10"):
        to_gateway_amount(Decimal("1.234"), currency)
    with pytest.raises(MoneyError, match="multiple of 10"):
        to_gateway_amount(Decimal("5.124"), currency)  # Stripe's own example: 5120 or 5130
    with pytest.raises(MoneyError, match="minor unit"):
        to_gateway_amount(Decimal("1.2305"), currency)
    assert charge_refusal(Decimal("1.230"), currency) is None
    assert charge_refusal(Decimal("1.234"), currency) is not None


@pytest.mark.parametrize("currency", TWO_DECIMAL_FOR_CHARGES)
def test_huf_and_twd_charge_two_decimal_amounts(currency: str) -> None:
    # "Stripe treats HUF as a zero-decimal currency for payouts, even though you can charge
    # two-decimal amounts": fractions are fine in a charge.
    assert to_gateway_amount(Decimal("800.45"), currency) == 80045
    assert to_gateway_amount(Decimal("800"), currency) == 80000
    with pytest.raises(MoneyError, match="minor unit"):
        to_gateway_amount(Decimal("800.455"), currency)


@pytest.mark.parametrize("currency", ["USD", "EUR", "GBP", "CAD", "SEK", "XYZ"])
def test_everything_else_is_two_decimal(currency: str) -> None:
    assert to_gateway_amount(Decimal("25.00"), currency) == 2500
    assert to_gateway_amount(Decimal("25.5"), currency) == 2550
    assert to_gateway_amount(Decimal("0.01"), currency) == 1
    with pytest.raises(MoneyError, match="minor unit"):
        to_gateway_amount(Decimal("25.001"), currency)


@pytest.mark.parametrize(("currency", "minimum"), sorted(EXPECTED_MINIMUMS.items()))
def test_every_minimum_on_both_sides(currency: str, minimum: str) -> None:
    exponent, step = EXPECTED_UNITS.get(currency, (2, 1))
    at = Decimal(minimum)
    below = at - Decimal(step).scaleb(-exponent)  # the next amount Stripe could take below it
    assert STRIPE_MINIMUM_CHARGE[currency] == at
    assert charge_refusal(at, currency) is None
    refusal = charge_refusal(below, currency)
    assert refusal is not None and f"minimum charge of {at} {currency}" in refusal
    assert to_gateway_amount(below, currency) == int(below.scaleb(exponent))  # sendable as such


def test_exact_amounts_sent() -> None:
    assert to_gateway_amount(Decimal("25.00"), "USD") == 2500
    assert to_gateway_amount(Decimal("25"), "JPY") == 25
    assert "minimum charge of 50 JPY" in (charge_refusal(Decimal("25"), "JPY") or "")
    assert to_gateway_amount(Decimal("1000"), "KRW") == 1000
    assert to_gateway_amount(Decimal("25.000"), "BHD") == 25000
    assert to_gateway_amount(Decimal("100"), "ISK") == 10000
    assert to_gateway_amount(Decimal("1000"), "UGX") == 100000
    assert to_gateway_amount(Decimal("1000"), "MGA") == 1000
    assert to_gateway_amount(Decimal("175.00"), "HUF") == 17500


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("49", "JPY"), ("49", "KRW"), ("0.49", "USD"), ("0.29", "GBP"), ("174.99", "HUF")],
)
def test_just_below_a_minimum_is_refused(amount: str, currency: str) -> None:
    assert "minimum" in (charge_refusal(Decimal(amount), currency) or "")


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("50", "JPY"), ("50", "KRW"), ("0.50", "USD"), ("0.30", "GBP"), ("175", "HUF")],
)
def test_a_minimum_itself_is_accepted(amount: str, currency: str) -> None:
    assert charge_refusal(Decimal(amount), currency) is None


def test_no_minimum_is_known_for_unlisted_currencies() -> None:
    # Stripe converts them to the settlement currency, whose minimum then applies: unknowable
    # here, so only precision and sign are checked.
    assert charge_refusal(Decimal("0.01"), "XYZ") is None
    assert charge_refusal(Decimal("1"), "VND") is None
    assert charge_refusal(Decimal("0.010"), "KWD") is None


@pytest.mark.parametrize("amount", ["0", "-1", "-0.50", "0.000"])
def test_zero_and_negative_amounts_are_refused(amount: str) -> None:
    assert "greater than zero" in (charge_refusal(Decimal(amount), "XYZ") or "")


@pytest.mark.parametrize("currency", ["usd", "US", "USDD", ""])
def test_malformed_currency_codes_are_refused(currency: str) -> None:
    with pytest.raises(MoneyError, match="ISO 4217"):
        to_gateway_amount(Decimal("1"), currency)
    assert "ISO 4217" in (charge_refusal(Decimal("1"), currency) or "")


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_amounts_raise(amount: str) -> None:
    with pytest.raises(MoneyError, match="finite"):
        to_gateway_amount(Decimal(amount), "USD")


@given(
    st.sampled_from(sorted({*EXPECTED_UNITS, "USD", "EUR", "XYZ"})),
    st.integers(min_value=1, max_value=10**12),
)
def test_every_sendable_amount_round_trips(currency: str, units: int) -> None:
    exponent, step = EXPECTED_UNITS.get(currency, (2, 1))
    minor = units * step
    amount = Decimal(minor).scaleb(-exponent)
    assert to_gateway_amount(amount, currency) == minor


# The whole refusal, for each rule: charge_refusal's text is what a refused setting or a failed
# recharge run shows (prefixed by common/recharge/limits.py), so every word of it is the product.
@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        # A fraction finer than Stripe's minor unit.
        (
            "25.001",
            "USD",
            "amount 25.001 USD does not fit Stripe's minor unit for USD (2 decimal places)",
        ),
        (
            "1000.5",
            "JPY",
            "amount 1000.5 JPY does not fit Stripe's minor unit for JPY (0 decimal places)",
        ),
        (
            "25.50",
            "MGA",
            "amount 25.50 MGA does not fit Stripe's minor unit for MGA (0 decimal places)",
        ),
        (
            "100.001",
            "ISK",
            "amount 100.001 ISK does not fit Stripe's minor unit for ISK (2 decimal places)",
        ),
        (
            "1.2305",
            "KWD",
            "amount 1.2305 KWD does not fit Stripe's minor unit for KWD (3 decimal places)",
        ),
        (
            "800.455",
            "HUF",
            "amount 800.455 HUF does not fit Stripe's minor unit for HUF (2 decimal places)",
        ),
        # Fine in the minor unit, but not a multiple of Stripe's step.
        (
            "100.5",
            "ISK",
            "amount 100.5 ISK is not a multiple of 1.00 ISK: Stripe needs its amount (10050) to be "
            "a multiple of 100 for ISK",
        ),
        (
            "0.99",
            "UGX",
            "amount 0.99 UGX is not a multiple of 1.00 UGX: Stripe needs its amount (99) to be "
            "a multiple of 100 for UGX",
        ),
        (
            "5.124",
            "KWD",
            "amount 5.124 KWD is not a multiple of 0.010 KWD: Stripe needs its amount (5124) to be "
            "a multiple of 10 for KWD",
        ),
        (
            "25.125",
            "BHD",
            "amount 25.125 BHD is not a multiple of 0.010 BHD: Stripe needs its amount (25125) to "
            "be a multiple of 10 for BHD",
        ),
        # A malformed code.
        ("1", "usd", "currency must be a 3-letter ISO 4217 code in capitals, got 'usd'"),
    ],
)
def test_what_stripe_cannot_take_is_refused_with_the_whole_reason(
    amount: str, currency: str, message: str
) -> None:
    with pytest.raises(MoneyError) as exc:
        to_gateway_amount(Decimal(amount), currency)
    assert str(exc.value) == message
    assert charge_refusal(Decimal(amount), currency) == message


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_non_finite_amounts_are_refused_with_the_whole_reason(amount: str) -> None:
    with pytest.raises(MoneyError) as exc:
        to_gateway_amount(Decimal(amount), "USD")
    assert str(exc.value) == f"amount {amount} USD is not a finite number"


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("0", "XYZ", "amount 0 XYZ must be greater than zero"),
        ("0.00", "USD", "amount 0.00 USD must be greater than zero"),
        ("-0.01", "USD", "amount -0.01 USD must be greater than zero"),
        ("-100", "ISK", "amount -100 ISK must be greater than zero"),
        ("0.49", "USD", "amount 0.49 USD is below Stripe's minimum charge of 0.50 USD"),
        ("49", "JPY", "amount 49 JPY is below Stripe's minimum charge of 50 JPY"),
        ("0.29", "GBP", "amount 0.29 GBP is below Stripe's minimum charge of 0.30 GBP"),
        ("174.99", "HUF", "amount 174.99 HUF is below Stripe's minimum charge of 175.00 HUF"),
    ],
)
def test_sign_and_minimum_refusals_are_whole(amount: str, currency: str, message: str) -> None:
    assert charge_refusal(Decimal(amount), currency) == message


def test_unlisted_currencies_are_plain_two_decimal() -> None:
    unit = stripe_minor_unit("XYZ")
    assert (unit.exponent, unit.step) == (2, 1)
    assert stripe_minor_unit("USD") == stripe_minor_unit("EUR") == unit
