"""The accounts table: its SQL, reading accounts under their row lock, and turning a locked row
into the policy's snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from common.recharge.policy import AccountSnapshot


class AccountError(Exception):
    """A refusal with a one-line reason (unknown account, duplicate id, …)."""


# Rows are locked in id order so that two transactions touching the same accounts can never
# wait on each other in a cycle.
# What the policy and the recharge start read of a locked account (`a`); also selected by the
# debit statement (common/usage/debits.py), which locks its accounts itself.
# Every value comes from the locked row itself, never from a subquery: after waiting for the
# lock PostgreSQL re-reads the row as the transaction it waited for left it, while a subquery
# would still answer from the statement's older snapshot (migration 0005).
ACCOUNT_COLUMNS = """a.id, a.currency, a.balance, a.status, a.suspended_reason,
       a.auto_recharge_enabled, a.balance_amount, a.recharge_amount, a.recharge_mode,
       a.max_recharge_amount, a.retry_tier, a.last_failure_at, a.payment_method,
       a.gateway_customer_id, a.auto_run_id, a.auto_run_id IS NOT NULL AS auto_run_in_flight,
       a.low_balance_alert, a.low_balance_alerted"""
ACCOUNT_COLUMN_COUNT = 18  # of ACCOUNT_COLUMNS: the debit statement pads its other rows to it
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


async def require_account(conn: asyncpg.Connection[Any], account_id: str) -> asyncpg.Record:
    """Lock the account (inside the caller's transaction) or refuse: unknown account."""
    row = await lock_account(conn, account_id)
    if row is None:
        raise AccountError(f"unknown account {account_id!r}")
    return row


MAX_ACCOUNT_ID_CHARS = 200  # accounts.id's CHECK


def account_id_problem(account_id: str) -> str | None:
    """Why `account_id` can never name an account (the table's CHECK, and text PostgreSQL
    stores), or None."""
    if not account_id or len(account_id) > MAX_ACCOUNT_ID_CHARS or "\x00" in account_id:
        return f"account id must be 1 to {MAX_ACCOUNT_ID_CHARS} characters"
    if not account_id.isascii():
        try:
            account_id.encode("utf-8")
        except UnicodeEncodeError:
            return "account id is not valid Unicode text"
    return None


_INSERT_ACCOUNT = "INSERT INTO accounts (id, currency) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING"
_FETCH_ACCOUNT = """
SELECT a.*, (SELECT coalesce(sum(amount), 0) FROM ledger_entries l
             WHERE l.account_id = a.id) AS ledger_sum
FROM accounts a WHERE a.id = $1
"""
_FETCH_CHARGES = """
SELECT c.amount, c.status, c.idempotency_key, r.kind, c.created_at, c.failure_code, c.run_id
FROM charges c JOIN recharge_runs r ON r.id = c.run_id
WHERE c.account_id = $1 ORDER BY c.id
"""
# The console's read of its account: the whole row, no ledger sum (it is polled).
_FETCH_ACCOUNT_ROW = "SELECT a.* FROM accounts a WHERE a.id = $1"
_FETCH_LATEST_CHARGE = """
SELECT c.id, c.amount, c.status, c.failure_code, c.run_id FROM charges c
WHERE c.account_id = $1 ORDER BY c.id DESC LIMIT 1
"""
_FETCH_RUNS_IN_FLIGHT = """
SELECT id, kind, state, tier, trigger FROM recharge_runs
WHERE account_id = $1 AND state IN ('pending', 'failing') ORDER BY id
"""
_ACCOUNT_CURRENCY = "SELECT currency FROM accounts WHERE id = $1"
# What `account_state` (common/accounts/support.py) shows, and nothing else: the account API
# reads it on every request, so no ledger sum and no join.
ACCOUNT_STATE_COLUMNS = """a.id, a.currency, a.balance, a.status, a.retry_tier,
       a.auto_recharge_enabled, a.balance_amount, a.recharge_amount, a.recharge_mode"""
_FETCH_ACCOUNT_STATE = f"SELECT {ACCOUNT_STATE_COLUMNS} FROM accounts a WHERE a.id = $1"
# Pages in id order after a cursor (an id, exclusive). One round trip, and the account row
# tells an unknown account (no row) from one with nothing after the cursor (one row, id NULL).
FETCH_LEDGER_PAGE = """
SELECT a.id AS account_id, l.id, l.kind, l.amount, l.balance_after, l.reference, l.memo,
       l.created_at
FROM accounts a
LEFT JOIN LATERAL (
    SELECT * FROM ledger_entries e WHERE e.account_id = a.id AND e.id > $2 ORDER BY e.id LIMIT $3
) l ON true
WHERE a.id = $1
ORDER BY l.id
"""
FETCH_CHARGES_PAGE = """
SELECT a.id AS account_id, c.id, c.run_id, c.kind, c.seq, c.amount, c.currency, c.status,
       c.idempotency_key, c.failure_code, c.failure_message, c.created_at, c.updated_at
FROM accounts a
LEFT JOIN LATERAL (
    SELECT ch.*, r.kind FROM charges ch JOIN recharge_runs r ON r.id = ch.run_id
    WHERE ch.account_id = a.id AND ch.id > $2 ORDER BY ch.id LIMIT $3
) c ON true
WHERE a.id = $1
ORDER BY c.id
"""
# The console's history, newest first: the same pages before a cursor (an id, exclusive; the
# largest bigint for the first page).
FETCH_LEDGER_PAGE_NEWEST = """
SELECT a.id AS account_id, l.id, l.kind, l.amount, l.balance_after, l.reference, l.memo,
       l.created_at
FROM accounts a
LEFT JOIN LATERAL (
    SELECT * FROM ledger_entries e WHERE e.account_id = a.id AND e.id < $2
    ORDER BY e.id DESC LIMIT $3
) l ON true
WHERE a.id = $1
ORDER BY l.id DESC
"""
FETCH_CHARGES_PAGE_NEWEST = """
SELECT a.id AS account_id, c.id, c.run_id, c.kind, c.seq, c.amount, c.currency, c.status,
       c.idempotency_key, c.failure_code, c.failure_message, c.created_at, c.updated_at
FROM accounts a
LEFT JOIN LATERAL (
    SELECT ch.*, r.kind FROM charges ch JOIN recharge_runs r ON r.id = ch.run_id
    WHERE ch.account_id = a.id AND ch.id < $2 ORDER BY ch.id DESC LIMIT $3
) c ON true
WHERE a.id = $1
ORDER BY c.id DESC
"""
# The customer's low-balance alert level (None: no alert). Set below the current balance it
# is armed; set at or above it, the balance is already low and nothing is announced until the
# balance has been back above the level once.
SET_LOW_BALANCE_ALERT = """
UPDATE accounts SET low_balance_alert = $2, low_balance_alerted = (balance < $2) IS TRUE,
                    updated_at = now()
WHERE id = $1
"""
# The debit's half of balance.low (common/usage/debits.py): mark the crossing once.
MARK_LOW_BALANCE_ALERTED = """
UPDATE accounts SET low_balance_alerted = true
WHERE id = $1 AND low_balance_alert IS NOT NULL AND NOT low_balance_alerted
      AND balance < low_balance_alert
RETURNING low_balance_alert, balance
"""


async def insert_account(conn: asyncpg.Connection[Any], account_id: str, currency: str) -> bool:
    """False when the id is taken."""
    status: str = await conn.execute(_INSERT_ACCOUNT, account_id, currency)
    return not status.endswith(" 0")


async def fetch_account(conn: asyncpg.Connection[Any], account_id: str) -> asyncpg.Record | None:
    """The whole row and the sum of its ledger (no lock)."""
    return await conn.fetchrow(_FETCH_ACCOUNT, account_id)


async def fetch_account_row(
    conn: asyncpg.Connection[Any], account_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(_FETCH_ACCOUNT_ROW, account_id)


async def fetch_latest_charge(
    conn: asyncpg.Connection[Any], account_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(_FETCH_LATEST_CHARGE, account_id)


async def fetch_account_state(
    conn: asyncpg.Connection[Any], account_id: str
) -> asyncpg.Record | None:
    """The columns of ACCOUNT_STATE_COLUMNS (no lock, no ledger sum)."""
    return await conn.fetchrow(_FETCH_ACCOUNT_STATE, account_id)


async def fetch_page(
    conn: asyncpg.Connection[Any], query: str, account_id: str, after: int, limit: int
) -> list[asyncpg.Record] | None:
    """FETCH_LEDGER_PAGE or FETCH_CHARGES_PAGE: the rows after `after`, [] when there are none,
    None for an unknown account."""
    rows = await conn.fetch(query, account_id, after, limit)
    if not rows:
        return None
    return [r for r in rows if r["id"] is not None]


async def fetch_charges(conn: asyncpg.Connection[Any], account_id: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(_FETCH_CHARGES, account_id))


async def fetch_runs_in_flight(
    conn: asyncpg.Connection[Any], account_id: str
) -> list[asyncpg.Record]:
    return list(await conn.fetch(_FETCH_RUNS_IN_FLIGHT, account_id))


async def account_currency(conn: asyncpg.Connection[Any], account_id: str) -> str | None:
    currency: str | None = await conn.fetchval(_ACCOUNT_CURRENCY, account_id)
    return currency


# Changes of the ladder or the status: each writes the row and its account_history entry in
# one statement; the history row holds the account as the change left it.
_HISTORY_OF_U = """
INSERT INTO account_history (account_id, cause, retry_tier, status, suspended_reason, balance,
                             auto_recharge, run_id, charge_id)
SELECT id, $2, retry_tier, status, suspended_reason, balance, auto_recharge_enabled, $3, $4
FROM u
"""
SET_TIER = f"""
WITH u AS (
    UPDATE accounts SET retry_tier = $5, last_failure_at = $6, updated_at = now()
    WHERE id = $1 RETURNING *
)
{_HISTORY_OF_U}
"""
SUSPEND = f"""
WITH u AS (
    UPDATE accounts SET status = 'suspended', suspended_reason = $5,
                        suspended_at = coalesce(suspended_at, now()), updated_at = now()
    WHERE id = $1 RETURNING *
)
{_HISTORY_OF_U}
"""
REACTIVATE = f"""
WITH u AS (
    UPDATE accounts SET status = 'active', suspended_reason = NULL, suspended_at = NULL,
                        updated_at = now()
    WHERE id = $1 RETURNING *
)
{_HISTORY_OF_U}
"""
FETCH_HISTORY = """
SELECT id, cause, retry_tier, status, suspended_reason, balance, auto_recharge, run_id,
       charge_id, created_at
FROM account_history WHERE account_id = $1 ORDER BY id
"""


# A credit: the ledger row (once per (kind, reference)) and the balance it moves, in one statement.
# Back at or above the low-balance alert level, it re-arms the alert (the next fall below it is
# announced again). It returns the account row after it (RETURNING sees the new values): the
# caller decides on it without reading the row again.
CREDIT = f"""
WITH entry AS (
    INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference, memo)
    SELECT $1, $2, a.balance + $2, $3, $4, $5 FROM accounts a WHERE a.id = $1
    ON CONFLICT (kind, reference) DO NOTHING
    RETURNING amount
)
UPDATE accounts a
SET balance = a.balance + entry.amount,
    low_balance_alerted = a.low_balance_alerted
        AND NOT coalesce(a.balance + entry.amount >= a.low_balance_alert, false),
    updated_at = now()
FROM entry WHERE a.id = $1
RETURNING {ACCOUNT_COLUMNS}, now() AS db_now
"""
