"""What the simulated gateway does with each payment method, named like Stripe's test methods."""

from __future__ import annotations

from typing import Final

# Charge succeeds (money moves). A few of Stripe's common success methods, so that scripts
# written for Stripe's test mode behave the same here.
SUCCEEDS: Final = frozenset(
    {
        "pm_card_visa",
        "pm_card_visa_debit",
        "pm_card_mastercard",
        "pm_card_mastercard_debit",
        "pm_card_amex",
        "pm_card_discover",
        "pm_card_us",
    }
)

# Attaches, then every charge fails with this code (a failed attempt: the retry ladder).
DECLINES_AT_CHARGE: Final = {
    "pm_card_chargeDeclined": ("card_declined", "Your card was declined."),
    "pm_card_chargeCustomerFail": ("card_declined", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "Your card has expired."),
    "pm_card_chargeDeclinedIncorrectCvc": (
        "incorrect_cvc",
        "Your card's security code is incorrect.",
    ),
    "pm_card_chargeDeclinedFraudulent": ("card_declined", "Your card was declined."),
    "pm_card_authenticationRequired": (
        "authentication_required",
        "This payment requires the customer to authenticate.",
    ),
}

# Refused when attached (CardRejected): the card never becomes the card on file.
DECLINES_AT_ATTACH: Final = {
    "pm_card_attachDeclined": ("card_declined", "Your card was declined."),
    # Stripe's own method of this name is refused at attach, and localstripe agrees.
    "pm_card_visa_chargeDeclined": ("card_declined", "Your card was declined."),
}

# A `pm_` id the simulator has never heard of: no money moves. A decline (rather than an
# error) keeps the failure visible on the account and on the retry ladder instead of
# dead-lettering a message, and it can never be mistaken for a successful charge.
UNKNOWN: Final = ("card_declined", "Unknown test payment method: the simulator declines it.")


def charge_decline(payment_method: str) -> tuple[str, str] | None:
    """None when the charge succeeds, else (code, message) of the decline."""
    if payment_method in SUCCEEDS:
        return None
    return DECLINES_AT_CHARGE.get(payment_method, UNKNOWN)
