"""Recharge limits (common/recharge/limits.py): minimum, maximum (global or the account's own),
the currency's minor unit and what the gateway can charge, each on both sides of its boundary.

The reasons are compared whole: settings, manual recharges and the charge step show them to the
customer or to support as they are. tests/integration/recharge/test_settings.py checks that those
callers pass the right limits; this file checks the limits themselves, with no service.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from common.recharge.limits import (
    LimitError,
    check_recharge_amount,
    effective_max,
    recharge_refusal,
)

MINIMUM = Decimal(20)
GLOBAL_MAX = Decimal(500)
ABOVE = "support can raise it for this account"


def refusal(amount: str, currency: str = "USD", account_max: str | None = None) -> str | None:
    return recharge_refusal(
        Decimal(amount),
        currency,
        minimum=MINIMUM,
        global_max=GLOBAL_MAX,
        account_max=None if account_max is None else Decimal(account_max),
    )


def check(amount: str, currency: str = "USD", account_max: str | None = None) -> None:
    check_recharge_amount(
        Decimal(amount),
        currency,
        minimum=MINIMUM,
        global_max=GLOBAL_MAX,
        account_max=None if account_max is None else Decimal(account_max),
    )


@pytest.mark.parametrize(
    ("account_max", "expected"),
    [
        (None, Decimal(500)),  # no maximum of its own: the global one
        (Decimal(1000), Decimal(1000)),  # support raised it
        (Decimal(100), Decimal(100)),  # or lowered it: the account's own still wins
        (Decimal(500), Decimal(500)),
    ],
)
def test_effective_max_is_the_accounts_own_when_it_has_one(
    account_max: Decimal | None, expected: Decimal
) -> None:
    assert effective_max(GLOBAL_MAX, account_max) == expected


@pytest.mark.parametrize(
    ("amount", "currency", "account_max"),
    [
        ("20", "USD", None),  # the minimum itself
        ("20.00", "USD", None),
        ("20.01", "USD", None),
        ("100", "USD", None),
        ("499.99", "USD", None),
        ("500", "USD", None),  # the global maximum itself
        ("500.00", "USD", "500"),
        ("1000", "USD", "1000"),  # an account's raised maximum itself
        ("100", "USD", "100"),  # an account's lowered maximum itself
        ("50", "JPY", None),  # Stripe's minimum for JPY is 50
        ("25.120", "KWD", None),  # three decimals, the last one 0
        ("100", "ISK", None),
        ("26", "MGA", None),  # whole ariary
        ("25.50", "XYZ", None),  # unlisted: two decimals, no minimum known
    ],
)
def test_amounts_within_the_limits_are_accepted(
    amount: str, currency: str, account_max: str | None
) -> None:
    assert refusal(amount, currency, account_max) is None
    check(amount, currency, account_max)  # no exception


@pytest.mark.parametrize(
    ("amount", "currency", "account_max", "message"),
    [
        (
            "19.99",
            "USD",
            None,
            "recharge amount 19.99 USD is below the minimum of 20.00",
        ),
        (
            "19.999999",
            "USD",
            None,
            # Below the minimum comes first, even for an amount that fits no minor unit.
            "recharge amount 19.999999 USD is below the minimum of 20.00",
        ),
        (
            "5",
            "USD",
            "1000",  # a raised maximum does not lower the minimum
            "recharge amount 5.00 USD is below the minimum of 20.00",
        ),
        (
            "19",
            "JPY",
            None,
            "recharge amount 19 JPY is below the minimum of 20",  # yen have no decimals
        ),
        (
            "500.01",
            "USD",
            None,
            f"recharge amount 500.01 USD is above the maximum of 500.00; {ABOVE}",
        ),
        (
            "600",
            "USD",
            None,
            f"recharge amount 600.00 USD is above the maximum of 500.00; {ABOVE}",
        ),
        (
            "501",
            "JPY",
            None,
            f"recharge amount 501 JPY is above the maximum of 500; {ABOVE}",
        ),
        (
            "19.5",
            "JPY",
            None,  # not a whole yen: shown as given, and refused for the minimum first
            "recharge amount 19.50 JPY is below the minimum of 20",
        ),
        (
            "1000.01",
            "USD",
            "1000",
            f"recharge amount 1000.01 USD is above the maximum of 1000.00; {ABOVE}",
        ),
        (
            "100.01",
            "USD",
            "100",  # a maximum lowered below the global one applies too
            f"recharge amount 100.01 USD is above the maximum of 100.00; {ABOVE}",
        ),
        (
            "20.001",
            "USD",
            None,
            "amount 20.001 USD does not fit the currency's minor unit (2 decimal places)",
        ),
        (
            "25.5",
            "ISK",
            None,
            "amount 25.5 ISK does not fit the currency's minor unit (0 decimal places)",
        ),
        (
            "25",
            "JPY",
            None,
            "the payment gateway cannot charge this: amount 25 JPY is below Stripe's minimum "
            "charge of 50 JPY",
        ),
        (
            "49",
            "JPY",
            None,
            "the payment gateway cannot charge this: amount 49 JPY is below Stripe's minimum "
            "charge of 50 JPY",
        ),
        (
            "25.125",
            "KWD",
            None,
            "the payment gateway cannot charge this: amount 25.125 KWD is not a multiple of "
            "0.010 KWD: Stripe needs its amount (25125) to be a multiple of 10 for KWD",
        ),
        (
            "25.50",
            "MGA",
            None,
            "the payment gateway cannot charge this: amount 25.50 MGA does not fit Stripe's minor "
            "unit for MGA (0 decimal places)",
        ),
        (
            "20",
            "usd",
            None,
            "the payment gateway cannot charge this: currency must be a 3-letter ISO 4217 code "
            "in capitals, got 'usd'",
        ),
    ],
)
def test_each_refusal_is_the_whole_reason(
    amount: str, currency: str, account_max: str | None, message: str
) -> None:
    assert refusal(amount, currency, account_max) == message
    with pytest.raises(LimitError) as exc:
        check(amount, currency, account_max)
    assert str(exc.value) == message
    assert isinstance(exc.value, ValueError)


def test_a_raised_maximum_lets_through_what_the_global_one_refuses() -> None:
    assert refusal("600", "USD", account_max="1000") is None
    check("600", "USD", account_max="1000")
    assert refusal("600", "USD") == (
        f"recharge amount 600.00 USD is above the maximum of 500.00; {ABOVE}"
    )
