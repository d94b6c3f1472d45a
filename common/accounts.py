"""Reading accounts under their row lock, and turning a row into the policy's snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from common.policy import AccountSnapshot

# Rows are locked in id order so that two transactions touching the same accounts can never
# wait on each other in a cycle.
# What the policy and the recharge start read of a locked account (`a`); also selected by the
# debit statement (common/debits.py), which locks its accounts itself.
ACCOUNT_COLUMNS = """a.id, a.currency, a.balance, a.status, a.auto_recharge_enabled,
       a.balance_amount, a.recharge_amount, a.recharge_mode, a.max_recharge_amount, a.retry_tier,
       a.last_failure_at, a.payment_method, a.gateway_customer_id,
       EXISTS (SELECT 1 FROM recharge_runs r
               WHERE r.account_id = a.id AND r.kind = 'auto' AND r.state IN ('pending', 'failing'))
           AS auto_run_in_flight"""
ACCOUNT_COLUMN_COUNT = 14  # of ACCOUNT_COLUMNS: the debit statement pads its other rows to it
LOCK_ACCOUNTS = f"""
SELECT {ACCOUNT_COLUMNS},
       now() AS db_now
FROM accounts a
WHERE a.id = ANY($1::text[])
ORDER BY a.id
FOR UPDATE OF a
"""


async def lock_accounts(
    conn: asyncpg.Connection[Any], account_ids: Sequence[str]
) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(LOCK_ACCOUNTS, sorted(set(account_ids)))
    return {row["id"]: row for row in rows}


async def lock_account(conn: asyncpg.Connection[Any], account_id: str) -> asyncpg.Record | None:
    return (await lock_accounts(conn, [account_id])).get(account_id)


async def lock_run(
    conn: asyncpg.Connection[Any], run_id: int
) -> tuple[asyncpg.Record | None, asyncpg.Record | None]:
    """Lock a recharge run and its account, account first (the order every path uses)."""
    account_id = await conn.fetchval("SELECT account_id FROM recharge_runs WHERE id = $1", run_id)
    if account_id is None:
        return None, None
    account = await lock_account(conn, account_id)
    run = await conn.fetchrow("SELECT * FROM recharge_runs WHERE id = $1 FOR UPDATE", run_id)
    return account, run


def snapshot(row: Any, *, balance: Any = None) -> AccountSnapshot:
    return AccountSnapshot(
        balance=row["balance"] if balance is None else balance,
        status=row["status"],
        auto_recharge_enabled=row["auto_recharge_enabled"],
        balance_amount=row["balance_amount"],
        recharge_amount=row["recharge_amount"],
        retry_tier=row["retry_tier"],
        last_failure_at=row["last_failure_at"],
        auto_run_in_flight=row["auto_run_in_flight"],
    )
