"""Support operations on accounts: create, credit (no card), show."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import asyncpg

from common.accounts import store
from common.accounts.ledger import apply_credit
from common.accounts.store import AccountError, require_account
from common.money import check_fits_minor_unit, parse_currency
from common.recharge.policy import armed_level


async def create_account(conn: asyncpg.Connection[Any], account_id: str, currency: str) -> None:
    if not account_id or len(account_id) > 200 or "\x00" in account_id:
        raise AccountError("account id must be 1 to 200 characters")
    currency = parse_currency(currency)
    if not await store.insert_account(conn, account_id, currency):
        raise AccountError(f"account {account_id!r} already exists")


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
        raise AccountError("a reason is required for a credit")
    reference = reference or f"support-{uuid.uuid4()}"
    async with conn.transaction():
        account = await require_account(conn, account_id)
        # The balance is money the customer can spend: whole cents (or yen), like a recharge.
        check_fits_minor_unit(amount, account["currency"])
        credited = await apply_credit(
            conn, account, amount, kind="credit", reference=reference, memo=reason
        )
        if credited is None:
            return account["balance"], False
        return credited.balance, True


async def show_account(conn: asyncpg.Connection[Any], account_id: str) -> dict[str, Any]:
    row = await store.fetch_account(conn, account_id)
    if row is None:
        raise AccountError(f"unknown account {account_id!r}")
    charges = await store.fetch_charges(conn, account_id)
    runs = await store.fetch_runs_in_flight(conn, account_id)
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
