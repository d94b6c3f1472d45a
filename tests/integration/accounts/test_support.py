"""Support operations on accounts (common/accounts/support.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.support.factories import create_account, new_id
from tests.support.pipeline import (
    account_row,
)


async def test_a_support_credit_reactivates_a_suspended_account(conn: Any) -> None:
    from common.accounts.support import credit_account

    acct = new_id()
    await create_account(
        conn, acct, balance="0", status="suspended", tier=4, threshold="100", recharge="20"
    )
    await conn.execute(
        "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, "
        "reference) VALUES ($1, -5, -5, 'usage', $2)",
        acct,
        f"x-{acct}",
    )
    await conn.execute("UPDATE accounts SET balance = -5 WHERE id = $1", acct)
    balance, _ = await credit_account(conn, acct, Decimal(3), "goodwill")
    assert balance == -2 and (await account_row(conn, acct))["status"] == "suspended"
    balance, _ = await credit_account(conn, acct, Decimal(10), "goodwill")
    assert balance == 8 and (await account_row(conn, acct))["status"] == "active"
