"""Recharge settings (common/recharge/settings.py) and the limits they enforce."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from common.recharge.limits import LimitError
from common.recharge.manual import request_manual_recharge
from common.recharge.settings import set_auto_recharge, set_max_recharge
from config.settings import Settings
from tests.support.factories import create_account, new_id
from tests.support.pipeline import (
    TEST_SETTINGS,
)


async def test_limits_are_enforced_with_clear_reasons(conn: Any) -> None:
    acct = new_id()
    await create_account(conn, acct, payment_method="pm_card_visa")
    s = TEST_SETTINGS  # minimum 20, maximum 500

    async def auto(t: str, r: str) -> Any:
        return await set_auto_recharge(
            conn, acct, s, balance_amount=Decimal(t), recharge_amount=Decimal(r)
        )

    with pytest.raises(LimitError, match=re.escape("below the minimum of 20.00")):
        await auto("100", "19.99")
    with pytest.raises(
        LimitError, match=re.escape("above the maximum of 500.00; support can raise it")
    ):
        await auto("1000", "600")
    with pytest.raises(LimitError, match="minor unit"):
        await auto("100", "20.001")
    await set_max_recharge(conn, acct, Decimal(1000), TEST_SETTINGS)
    await auto("1000", "600")  # support raised this account's maximum
    with pytest.raises(LimitError, match="below the minimum"):
        await request_manual_recharge(conn, acct, Decimal(5), s)
    with pytest.raises(LimitError, match=re.escape("above the maximum of 1000.00")):
        await request_manual_recharge(conn, acct, Decimal(1500), s)
    default_min = Settings()
    assert default_min.min_recharge_amount == 25
    with pytest.raises(LimitError, match=re.escape("below the minimum of 25.00")):
        await request_manual_recharge(conn, acct, Decimal(20), default_min)


async def test_lowering_an_accounts_maximum_below_its_recharge_amount_is_refused(
    conn: Any,
) -> None:
    """Regression: the lower maximum was accepted, and every later run of the account raised
    LimitError, was dead-lettered and stayed pending forever."""
    acct = new_id()
    await create_account(conn, acct, payment_method="pm_card_visa")
    await set_max_recharge(conn, acct, Decimal(1000), TEST_SETTINGS)
    await set_auto_recharge(
        conn, acct, TEST_SETTINGS, balance_amount=Decimal(1000), recharge_amount=Decimal(600)
    )
    with pytest.raises(LimitError, match=re.escape(f"{acct!r}") + ".*600.00"):
        await set_max_recharge(conn, acct, Decimal(500), TEST_SETTINGS)
    with pytest.raises(LimitError, match=re.escape("600.00")):
        await set_max_recharge(conn, acct, None, TEST_SETTINGS)  # back to the global 500
    row = await conn.fetchrow("SELECT max_recharge_amount FROM accounts WHERE id = $1", acct)
    assert row["max_recharge_amount"] == 1000


@pytest.mark.parametrize(
    ("currency", "recharge", "why"),
    [
        ("JPY", "25", "below Stripe's minimum charge of 50 JPY"),
        ("KWD", "25.125", "Stripe needs its amount (25125) to be a multiple of 10"),
        ("MGA", "25.50", "does not fit Stripe's minor unit for MGA"),
        ("ISK", "25.5", "does not fit the currency's minor unit"),
    ],
)
async def test_a_recharge_amount_the_gateway_cannot_charge_is_refused_with_the_reason(
    conn: Any, currency: str, recharge: str, why: str
) -> None:
    """Regression: R was checked against ISO 4217 only; Stripe refuses 25 JPY (its minimum is
    50), a three-decimal amount not ending in 0, a fraction of an ariary."""
    acct = new_id()
    await create_account(conn, acct, currency=currency, payment_method="pm_card_visa")
    with pytest.raises(LimitError, match=re.escape(why)):
        await set_auto_recharge(
            conn,
            acct,
            TEST_SETTINGS,
            balance_amount=Decimal(100),
            recharge_amount=Decimal(recharge),
        )
    await set_auto_recharge(
        conn, acct, TEST_SETTINGS, balance_amount=Decimal(100), recharge_amount=Decimal(60)
    )
