"""Small builders shared by the tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from common.gateway import ChargeRequest
from common.recharge.config import PolicyConfig
from common.usage.decode import Submission, decode_batch

POLICY = PolicyConfig(retry_min_interval=timedelta(seconds=1800), run_max_charges=10)


def event(
    account: str, amount: str = "1.00", event_id: str | None = None, *, currency: str = "USD"
) -> dict[str, Any]:
    return {
        "event_id": event_id or f"ev-{uuid.uuid4().hex}",
        "account_id": account,
        "amount": amount,
        "currency": currency,
        "occurred_at": datetime.now(UTC).isoformat(),
        "kind": "voice",
    }


def submission(*events: dict[str, Any], message_id: str | None = None) -> Submission:
    message_id = message_id or uuid.uuid4().hex
    return decode_batch(
        (), {"events": list(events)}, message_id=message_id, actor_name="record_usage_batch"
    )


async def create_account(
    conn: asyncpg.Connection[Any],
    account_id: str,
    *,
    balance: str = "0",
    currency: str = "USD",
    threshold: str | None = None,
    recharge: str | None = None,
    status: str = "active",
    suspended_reason: str = "ladder",
    tier: int = 0,
    payment_method: str | None = None,
) -> None:
    await conn.execute(
        """
        INSERT INTO accounts (id, currency, auto_recharge_enabled, balance_amount,
                              recharge_amount, status, suspended_at, suspended_reason, retry_tier,
                              last_failure_at, payment_method, gateway_customer_id)
        VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 = 'suspended' THEN now() END,
                CASE WHEN $6 = 'suspended' THEN $9 END, $7::smallint,
                CASE WHEN $7::smallint > 0 THEN now() END, $8,
                -- as the simulated gateway's attach_card would have made it
                CASE WHEN $8::text IS NOT NULL THEN 'cus_sim_' || $1 END)
        """,
        account_id,
        currency,
        threshold is not None,
        Decimal(threshold) if threshold else None,
        Decimal(recharge) if recharge else None,
        status,
        tier,
        payment_method,
        suspended_reason,
    )
    if Decimal(balance):
        await conn.execute(
            "INSERT INTO ledger_entries (account_id, amount, balance_after, kind, reference) "
            "VALUES ($1, $2, $2, 'credit', $3)",
            account_id,
            Decimal(balance),
            f"opening-{account_id}",
        )
        await conn.execute(
            "UPDATE accounts SET balance = $2 WHERE id = $1", account_id, Decimal(balance)
        )


async def balance_and_ledger(
    conn: asyncpg.Connection[Any], account_id: str
) -> tuple[Decimal, Decimal, int]:
    row = await conn.fetchrow(
        "SELECT a.balance, coalesce(sum(l.amount), 0) AS total, count(l.id) AS n "
        "FROM accounts a LEFT JOIN ledger_entries l ON l.account_id = a.id "
        "WHERE a.id = $1 GROUP BY a.balance",
        account_id,
    )
    assert row is not None
    return row["balance"], row["total"], row["n"]


def new_id(prefix: str = "acct") -> str:
    """A fresh account (or other) id: `<prefix>-<12 hex>`."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def charge_request(
    payment_method: str = "pm_card_visa", *, key: str | None = None, amount: str = "25.00"
) -> ChargeRequest:
    """A gateway charge request; a fresh idempotency key unless `key` is given."""
    return ChargeRequest(
        idempotency_key=key or f"recharge-{uuid.uuid4().hex}-1",
        account_id="acct-1",
        amount=Decimal(amount),
        currency="USD",
        customer_id="cus_sim_acct-1",
        payment_method=payment_method,
    )
