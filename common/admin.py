"""Support operations on accounts: create, credit, show, list rejected usage."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import asyncpg

from common.accounts import lock_account
from common.money import parse_currency
from common.names import EVENT_ACCOUNT_REACTIVATED
from common.outbox import emit_event
from common.policy import armed_level, should_reactivate


class AdminError(Exception):
    """A refusal with a one-line reason (unknown account, duplicate id, …)."""


async def create_account(conn: asyncpg.Connection[Any], account_id: str, currency: str) -> None:
    if not account_id or len(account_id) > 200 or "\x00" in account_id:
        raise AdminError("account id must be 1 to 200 characters")
    currency = parse_currency(currency)
    status = await conn.execute(
        "INSERT INTO accounts (id, currency) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        account_id,
        currency,
    )
    if status.endswith(" 0"):
        raise AdminError(f"account {account_id!r} already exists")


async def require_account(conn: asyncpg.Connection[Any], account_id: str) -> asyncpg.Record:
    row = await lock_account(conn, account_id)
    if row is None:
        raise AdminError(f"unknown account {account_id!r}")
    return row


async def apply_credit(
    conn: asyncpg.Connection[Any],
    account: asyncpg.Record,
    amount: Decimal,
    *,
    kind: str,
    reference: str,
    memo: str | None,
) -> Decimal | None:
    """Credit a locked account once per (kind, reference); reactivate it if it comes back above
    zero. Returns the new balance, or None when that reference was already credited."""
    balance: Decimal | None = await conn.fetchval(
        """
        WITH entry AS (
            INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference, memo)
            SELECT $1, $2, a.balance + $2, $3, $4, $5 FROM accounts a WHERE a.id = $1
            ON CONFLICT (kind, reference) DO NOTHING
            RETURNING amount
        )
        UPDATE accounts SET balance = balance + entry.amount, updated_at = now()
        FROM entry WHERE accounts.id = $1
        RETURNING balance
        """,
        account["id"],
        amount,
        kind,
        reference,
        memo,
    )
    if balance is not None and should_reactivate(account["status"], balance):
        await conn.execute(
            "UPDATE accounts SET status = 'active', suspended_at = NULL WHERE id = $1",
            account["id"],
        )
        await emit_event(
            conn, EVENT_ACCOUNT_REACTIVATED, {"account_id": account["id"], "balance": str(balance)}
        )
    return balance


async def credit_account(
    conn: asyncpg.Connection[Any],
    account_id: str,
    amount: Decimal,
    reason: str,
    reference: str | None = None,
) -> tuple[Decimal, bool]:
    """Support adjustment (no card). Returns (balance, applied); a repeated `reference` is a
    no-op, so scripts can retry safely."""
    if not reason.strip():
        raise AdminError("a reason is required for a credit")
    reference = reference or f"support-{uuid.uuid4()}"
    async with conn.transaction():
        account = await require_account(conn, account_id)
        balance = await apply_credit(
            conn, account, amount, kind="credit", reference=reference, memo=reason
        )
        if balance is None:
            return account["balance"], False
        return balance, True


async def show_account(conn: asyncpg.Connection[Any], account_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        """
        SELECT a.*, (SELECT coalesce(sum(amount), 0) FROM ledger_entries l
                     WHERE l.account_id = a.id) AS ledger_sum
        FROM accounts a WHERE a.id = $1
        """,
        account_id,
    )
    if row is None:
        raise AdminError(f"unknown account {account_id!r}")
    charges = await conn.fetch(
        """
        SELECT c.amount, c.status, c.idempotency_key, r.kind, c.created_at, c.failure_code,
               c.run_id
        FROM charges c JOIN recharge_runs r ON r.id = c.run_id
        WHERE c.account_id = $1 ORDER BY c.id
        """,
        account_id,
    )
    runs = await conn.fetch(
        "SELECT id, kind, state, tier, trigger FROM recharge_runs "
        "WHERE account_id = $1 AND state IN ('pending', 'failing') ORDER BY id",
        account_id,
    )
    tier = row["retry_tier"]
    level = (
        armed_level(row["balance_amount"], tier)
        if tier > 0 and row["auto_recharge_enabled"] and row["balance_amount"] is not None
        else None
    )
    return {
        "account_id": row["id"],
        "currency": row["currency"],
        "balance": row["balance"],
        "status": row["status"],
        "auto_recharge": {
            "enabled": row["auto_recharge_enabled"],
            "balance_amount": row["balance_amount"],
            "recharge_amount": row["recharge_amount"],
            "mode": row["recharge_mode"],
        },
        "retry_tier": tier,
        "armed_level": level,
        "last_failure_at": row["last_failure_at"],
        "max_recharge_amount": row["max_recharge_amount"],
        "payment_method": row["payment_method"],
        "suspended_at": row["suspended_at"],
        "ledger_sum": row["ledger_sum"],
        "runs_in_flight": [dict(r) for r in runs],
        "charges": [
            {
                "amount": c["amount"],
                "status": c["status"],
                "idempotency_key": c["idempotency_key"],
                "kind": c["kind"],
                "created_at": c["created_at"],
                "failure_code": c["failure_code"],
            }
            for c in charges
        ],
    }


async def list_rejected(conn: asyncpg.Connection[Any], limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, rejected_at, actor_name, message_id, event_id, account_id, reason, payload "
        "FROM rejected_usage ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [dict(r) for r in rows]
