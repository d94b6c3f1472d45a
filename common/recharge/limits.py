"""Recharge limits: the minimum, the maximum (per account when support raised it), the
currency's minor unit, and what the payment gateway can charge (Stripe's precision per currency
and its minimum charge: common/gateway/currencies.py; the simulated gateway follows Stripe).
One function, used by settings, manual recharges and the charge step."""

from __future__ import annotations

from decimal import Decimal

from common.gateway.currencies import charge_refusal
from common.money import MoneyError, check_fits_minor_unit, format_amount, minor_units


class LimitError(ValueError):
    """A recharge amount outside the limits; the message says which and how to get past it."""


def effective_max(global_max: Decimal, account_max: Decimal | None) -> Decimal:
    return account_max if account_max is not None else global_max


def _shown(amount: Decimal, currency: str) -> str:
    """The amount as the customer counts it: in the currency's own decimals where it has fewer
    than two and the amount fits them (25 JPY, not 25.00); else format_amount's."""
    unit = Decimal(1).scaleb(-minor_units(currency))
    if minor_units(currency) < 2 and amount == amount.quantize(unit):
        return format(amount.quantize(unit), "f")
    return format_amount(amount)


def recharge_refusal(
    amount: Decimal,
    currency: str,
    *,
    minimum: Decimal,
    global_max: Decimal,
    account_max: Decimal | None,
) -> str | None:
    """Why `amount` cannot be recharged as things stand, or None when it can."""
    if amount < minimum:
        return (
            f"recharge amount {_shown(amount, currency)} {currency} is below the minimum of "
            f"{_shown(minimum, currency)}"
        )
    maximum = effective_max(global_max, account_max)
    if amount > maximum:
        return (
            f"recharge amount {_shown(amount, currency)} {currency} is above the maximum of "
            f"{_shown(maximum, currency)}; support can raise it for this account"
        )
    try:
        check_fits_minor_unit(amount, currency)
    except MoneyError as exc:
        return str(exc)
    refusal = charge_refusal(amount, currency)
    if refusal is not None:
        return f"the payment gateway cannot charge this: {refusal}"
    return None


def check_recharge_amount(
    amount: Decimal,
    currency: str,
    *,
    minimum: Decimal,
    global_max: Decimal,
    account_max: Decimal | None,
) -> None:
    refusal = recharge_refusal(
        amount, currency, minimum=minimum, global_max=global_max, account_max=account_max
    )
    if refusal is not None:
        raise LimitError(refusal)
