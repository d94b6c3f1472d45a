"""Manual recharges (common/recharge/manual.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from common.recharge.manual import request_manual_recharge
from common.recharge.settings import attach_card
from tests.support.factories import balance_and_ledger, create_account, new_id
from tests.support.pipeline import (
    TEST_SETTINGS,
    account_row,
    assert_books_balance,
    charges,
    settle,
)


async def test_manual_recharges_credit_once_and_failures_leave_the_tier_alone(
    engine: Any, conn: Any, sim: Any
) -> None:
    from common.accounts.store import AccountError as AdminError

    acct = new_id()
    await create_account(conn, acct, balance="5")
    with pytest.raises(AdminError, match="no card on file"):
        await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    await attach_card(conn, sim, acct, "pm_card_visa", TEST_SETTINGS)
    run_id = await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    with pytest.raises(AdminError, match="already in progress"):
        await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    await settle(engine, sim, acct)
    assert (await balance_and_ledger(conn, acct))[0] == 55
    await attach_card(conn, sim, acct, "pm_card_chargeDeclinedInsufficientFunds", TEST_SETTINGS)
    await request_manual_recharge(conn, acct, Decimal(50), TEST_SETTINGS)
    await settle(engine, sim, acct)
    rows = await charges(conn, acct)
    assert [(c["run_kind"], c["status"], c["failure_code"]) for c in rows] == [
        ("manual", "succeeded", None),
        ("manual", "failed", "insufficient_funds"),
    ]
    assert (await account_row(conn, acct))["retry_tier"] == 0
    assert rows[0]["run_id"] == run_id
    await assert_books_balance(conn, sim, acct)
