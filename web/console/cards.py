"""Card entry with PAYMENT_GATEWAY=simulated: Stripe's test card numbers, mapped to the
simulated gateway's payment methods (named like Stripe's). Pure.

The number is checked and mapped here and then dropped: only the payment method, the brand,
the last four digits and the expiry go further, and nothing of it is logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Final

from common.recharge.settings import CardDisplay

# Stripe's documented test numbers (https://docs.stripe.com/testing) and what each does.
TEST_CARDS: Final = {
    "4242424242424242": ("pm_card_visa", "visa"),
    "4000056655665556": ("pm_card_visa_debit", "visa"),
    "5555555555554444": ("pm_card_mastercard", "mastercard"),
    "378282246310005": ("pm_card_amex", "amex"),
    "4000000000000002": ("pm_card_chargeDeclined", "visa"),
    "4000000000009995": ("pm_card_chargeDeclinedInsufficientFunds", "visa"),
    "4000000000000069": ("pm_card_chargeDeclinedExpiredCard", "visa"),
    "4000002500003155": ("pm_card_authenticationRequired", "visa"),
    "4000002760003184": ("pm_card_authenticationRequired", "visa"),
}
BRAND_NAMES: Final = {"visa": "Visa", "mastercard": "Mastercard", "amex": "American Express"}
_EXPIRY = re.compile(r"(\d{1,2})\s*/\s*(\d{2}|\d{4})")


class CardInputError(ValueError):
    """`field` is the form field the message belongs next to."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class SimulatedCard:
    payment_method: str
    display: CardDisplay


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def parse_card(number: str, expiry: str, cvc: str, today: date) -> SimulatedCard:
    digits = re.sub(r"[\s-]", "", number)
    if not digits.isdigit() or not 12 <= len(digits) <= 19 or not luhn_ok(digits):
        raise CardInputError("card_number", "This card number is not valid.")
    known = TEST_CARDS.get(digits)
    if known is None:
        raise CardInputError(
            "card_number",
            "This is a test environment: use one of Stripe's test card numbers, "
            "such as 4242 4242 4242 4242.",
        )
    match = _EXPIRY.fullmatch(expiry.strip())
    if match is None:
        raise CardInputError("expiry", "Enter the expiry date as MM / YY.")
    month, year = int(match[1]), int(match[2])
    year = year + 2000 if year < 100 else year
    if not 1 <= month <= 12:
        raise CardInputError("expiry", "The expiry month must be between 01 and 12.")
    if (year, month) < (today.year, today.month) or year > today.year + 20:
        raise CardInputError(
            "expiry",
            "This card has expired." if year <= today.year else "The expiry year is too far ahead.",
        )
    wanted = 4 if known[1] == "amex" else 3
    if not (cvc.isdigit() and len(cvc) == wanted):
        raise CardInputError("cvc", f"The security code is {wanted} digits.")
    payment_method, brand = known
    return SimulatedCard(payment_method, CardDisplay(brand, digits[-4:], month, year))
