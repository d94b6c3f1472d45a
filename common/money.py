"""Exact money: decimal strings in, `Decimal` out, never a float.

Storage is NUMERIC(20,6): at most 14 integer digits and 6 decimal places. Amounts must be
strictly positive; a sign is never accepted, the kind of ledger row carries the direction.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

MAX_DECIMALS: Final = 6
MAX_INTEGER_DIGITS: Final = 14
_AMOUNT_RE: Final = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?", re.ASCII)

# ISO 4217 minor units (the maintenance agency's list one) of our LEDGER amounts: every code whose
# minor unit is not 2, so that the fallback of 2 is right for any other code. MGA is listed at its
# ISO value although that is the default, because Stripe writes it differently: a card charge
# follows Stripe's table instead (common/gateway/currencies.py, where ISK and UGX are x100 and MGA
# is zero-decimal), and this table must not be "fixed" to match that one.
_MINOR_UNITS: Final = {
    "BHD": 3, "BIF": 0, "CLF": 4, "CLP": 0, "DJF": 0, "GNF": 0, "IQD": 3, "ISK": 0, "JOD": 3,
    "JPY": 0, "KMF": 0, "KRW": 0, "KWD": 3, "LYD": 3, "MGA": 2, "OMR": 3, "PYG": 0, "RWF": 0,
    "TND": 3, "UGX": 0, "UYI": 0, "UYW": 4, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
}  # fmt: skip
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}", re.ASCII)


class MoneyError(ValueError):
    """An amount or currency that can never become valid: the message says why."""


def parse_amount(value: object, *, field: str = "amount") -> Decimal:
    """Parse a positive decimal string with at most 6 decimal places.

    Refused, each with its own reason: non-strings (JSON numbers included: a float has already
    lost exactness), empty text, signs, exponents, NaN/Infinity, non-ASCII digits, white space,
    zero, too many decimals, too many integer digits.
    """
    if type(value) is not str:
        kind = (
            "a number"
            if isinstance(value, int | float) and not isinstance(value, bool)
            else type(value).__name__
        )
        raise MoneyError(f"{field} must be a decimal string, got {kind}")
    # Hot path (every usage event): the pattern admits only digits and one point, so anything
    # it matches is none of the special cases below; those only name what is wrong.
    match = _AMOUNT_RE.fullmatch(value)
    if match is None:
        if value == "":
            raise MoneyError(f"{field} is empty")
        if value.strip().lower().lstrip("+-") in {"nan", "snan", "inf", "infinity"}:
            raise MoneyError(f"{field} must be a finite number, got {value!r}")
        if value.startswith("-") and _AMOUNT_RE.fullmatch(value[1:]):
            # A negative number; "-abc" is no number at all, and is told so below.
            raise MoneyError(f"{field} must be positive, got {value!r}")
        raise MoneyError(
            f"{field} must look like 12.345678 (digits, optional point), got {value!r}"
        )
    frac = match["frac"] or ""
    if len(frac) > MAX_DECIMALS:
        raise MoneyError(f"{field} has more than {MAX_DECIMALS} decimal places: {value!r}")
    if len(match["int"].lstrip("0")) > MAX_INTEGER_DIGITS:
        raise MoneyError(f"{field} is too large (more than {MAX_INTEGER_DIGITS} integer digits)")
    amount = Decimal(value)
    if amount == 0:
        raise MoneyError(f"{field} must be greater than zero")
    return amount


def parse_currency(value: object) -> str:
    if not isinstance(value, str) or _CURRENCY_RE.fullmatch(value) is None:
        raise MoneyError(f"currency must be a 3-letter ISO 4217 code in capitals, got {value!r}")
    return value


def minor_units(currency: str) -> int:
    return _MINOR_UNITS.get(currency, 2)


def check_fits_minor_unit(amount: Decimal, currency: str, *, field: str = "amount") -> None:
    """A card charge must be a whole number of the currency's smallest unit (cents, yen)."""
    units = minor_units(currency)
    if amount != amount.quantize(Decimal(1).scaleb(-units)):
        raise MoneyError(
            f"{field} {amount} {currency} does not fit the currency's minor unit "
            f"({units} decimal places)"
        )


def to_minor_units(amount: Decimal, currency: str) -> int:
    check_fits_minor_unit(amount, currency)
    return int(amount.scaleb(minor_units(currency)))


def format_amount(amount: Decimal) -> str:
    """Canonical text: no exponent, trailing zeros beyond the currency-agnostic 2 dropped."""
    text = format(amount.normalize(), "f")
    if "." not in text:
        return text + ".00"
    whole, frac = text.split(".")
    return f"{whole}.{frac.ljust(2, '0')}"
