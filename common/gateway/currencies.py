"""Stripe's own rules for charge amounts: its minor units, their granularity, its minimums.

These are NOT ISO 4217 (common/money.py keeps ISO for our ledger): Stripe's "amount" is an
integer in Stripe's minor unit, which differs from ISO for ISK and UGX, and Stripe refuses some
integers that ISO would allow. Source: Stripe's "Supported currencies" page
(docs.stripe.com/currencies: "Zero-decimal currencies", "Special cases", "Minimum charge amount
by currency"), plus its former "Three-decimal currencies" section (still enforced for BHD, JOD,
KWD, OMR, TND; quoted below). Every rule here is one a charge request can break; a request that
breaks one is refused before it is sent, since Stripe would answer 400 invalid_request_error
anyway (ours to fix, never the customer's).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Final

from common.money import MoneyError, parse_currency


@dataclass(frozen=True, slots=True)
class MinorUnit:
    """How Stripe writes an amount of one currency: `amount * 10**exponent`, a multiple of
    `step` (1 = any integer)."""

    exponent: int
    step: int = 1


_ZERO: Final = MinorUnit(0)
_TWO: Final = MinorUnit(2)
# ISK and UGX "transitioned to a zero-decimal currency, but backward compatibility requires you
# to represent it as a two-decimal value, where the decimal amount is always 00 ... You can't
# charge fractions" (Special cases). Stripe answers a fraction with 400
# invalid_charge_amount_no_decimal_compatible ("charged amounts must be evenly divisible by 100").
_WHOLE_IN_TWO: Final = MinorUnit(2, step=100)
# "to ensure compatibility with Stripe's payments partners, these API calls require the
# least-significant (last) digit to be 0 ... 5.124 KWD must be rounded to 5120 or 5130".
_THREE_LAST_ZERO: Final = MinorUnit(3, step=10)

# Every currency whose rule is not plain two-decimal, plus HUF and TWD: Stripe lists them as
# special cases, but only for payouts ("Stripe treats HUF as a zero-decimal currency for payouts,
# even though you can charge two-decimal amounts"; the same words for TWD). For a charge they are
# two-decimal; they are listed so that nobody "fixes" them to zero-decimal.
#
# UGX is in Stripe's zero-decimal list AND in its special cases; the special case is what Stripe
# enforces (5 UGX sent as 5 is refused with "Currency UGX has become effectively zero-decimal and
# charged amounts must be evenly divisible by 100"), so UGX is written like ISK.
STRIPE_MINOR_UNITS: Final = MappingProxyType(
    {
        "BIF": _ZERO,
        "CLP": _ZERO,
        "DJF": _ZERO,
        "GNF": _ZERO,
        "JPY": _ZERO,
        "KMF": _ZERO,
        "KRW": _ZERO,
        "MGA": _ZERO,  # ISO 4217 says 2 (the ledger keeps 2); Stripe takes whole ariary
        "PYG": _ZERO,
        "RWF": _ZERO,
        "VND": _ZERO,
        "VUV": _ZERO,
        "XAF": _ZERO,
        "XOF": _ZERO,
        "XPF": _ZERO,
        "ISK": _WHOLE_IN_TWO,
        "UGX": _WHOLE_IN_TWO,
        "BHD": _THREE_LAST_ZERO,
        "JOD": _THREE_LAST_ZERO,
        "KWD": _THREE_LAST_ZERO,
        "OMR": _THREE_LAST_ZERO,
        "TND": _THREE_LAST_ZERO,
        "HUF": _TWO,
        "TWD": _TWO,
    }
)

# "Minimum charge amount by currency", in major units. Stripe applies the minimum of the account's
# settlement currency after conversion, so these are exact only for a charge in the settlement
# currency; for any other currency no minimum can be known here (it depends on the account's bank
# account and the day's rate), and none is checked: Stripe's own amount_too_small answer is then
# the check. BGN is gone from Stripe's current list (Bulgaria now uses the euro).
STRIPE_MINIMUM_CHARGE: Final = MappingProxyType(
    {
        "USD": Decimal("0.50"),
        "AED": Decimal("2.00"),
        "ARS": Decimal("0.50"),
        "AUD": Decimal("0.50"),
        "BRL": Decimal("0.50"),
        "CAD": Decimal("0.50"),
        "CHF": Decimal("0.50"),
        "COP": Decimal("0.50"),
        "CZK": Decimal("15.00"),
        "DKK": Decimal("2.50"),
        "EUR": Decimal("0.50"),
        "GBP": Decimal("0.30"),
        "HKD": Decimal("4.00"),
        "HUF": Decimal("175.00"),
        "IDR": Decimal("0.50"),
        "ILS": Decimal("0.50"),
        "INR": Decimal("0.50"),
        "JPY": Decimal("50"),
        "KRW": Decimal("50"),
        "MXN": Decimal("10"),
        "MYR": Decimal("2.00"),
        "NOK": Decimal("3.00"),
        "NZD": Decimal("0.50"),
        "PHP": Decimal("0.50"),
        "PLN": Decimal("2.00"),
        "RON": Decimal("2.00"),
        "RUB": Decimal("0.50"),
        "SEK": Decimal("3.00"),
        "SGD": Decimal("0.50"),
        "THB": Decimal("10"),
        "ZAR": Decimal("0.50"),
    }
)


def stripe_minor_unit(currency: str) -> MinorUnit:
    """ "Currencies are two-decimal currencies unless otherwise specified." """
    return STRIPE_MINOR_UNITS.get(parse_currency(currency), _TWO)


def to_gateway_amount(amount: Decimal, currency: str) -> int:
    """The integer Stripe expects for `amount` of `currency` (JPY 500 -> 500, USD 25.00 -> 2500,
    ISK 5 -> 500, BHD 25.000 -> 25000).

    Raises MoneyError, with the reason, when Stripe cannot take the amount at that precision or
    the currency code is malformed. Neither sign nor Stripe's minimum is checked here (see
    charge_refusal): the conversion itself is exact either way.
    """
    unit = stripe_minor_unit(currency)
    if not amount.is_finite():
        raise MoneyError(f"amount {amount} {currency} is not a finite number")
    scaled = amount.scaleb(unit.exponent)
    if scaled != scaled.to_integral_value():
        raise MoneyError(
            f"amount {amount} {currency} does not fit Stripe's minor unit for {currency} "
            f"({unit.exponent} decimal places)"
        )
    minor = int(scaled)
    if minor % unit.step:
        whole = Decimal(unit.step).scaleb(-unit.exponent)
        raise MoneyError(
            f"amount {amount} {currency} is not a multiple of {whole} {currency}: Stripe needs "
            f"its amount ({minor}) to be a multiple of {unit.step} for {currency}"
        )
    return minor


def charge_refusal(amount: Decimal, currency: str) -> str | None:
    """Why Stripe would refuse to charge `amount` `currency` (precision, sign, minimum), or None.

    None does not promise success: a currency without a listed minimum is converted to the
    account's settlement currency and may still be too small there.
    """
    try:
        to_gateway_amount(amount, currency)
    except MoneyError as exc:
        return str(exc)
    if amount <= 0:
        return f"amount {amount} {currency} must be greater than zero"
    minimum = STRIPE_MINIMUM_CHARGE.get(currency)
    if minimum is not None and amount < minimum:
        return (
            f"amount {amount} {currency} is below Stripe's minimum charge of {minimum} {currency}"
        )
    return None
