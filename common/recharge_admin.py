"""Recharge settings and manual recharges: the card on file, auto-recharge, limits."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from common.accounts import lock_account, snapshot
from common.admin import AdminError, require_account
from common.gateway import PaymentGateway
from common.limits import check_recharge_amount
from common.money import check_fits_minor_unit
from common.policy import StartRecharge, decide_recharge
from common.recharge_start import PolicyConfig, start_auto_run, start_run
from config.settings import Settings

FINAL_RUN_STATES = ("succeeded", "failed", "capped")


@dataclass(frozen=True, slots=True)
class CardResult:
    customer_id: str
    payment_method: str
    attempt_run_id: int | None


async def attach_card(
    conn: asyncpg.Connection[Any],
    gw: PaymentGateway,
    account_id: str,
    payment_method: str,
    settings: Settings,
) -> CardResult:
    """Put a card on file; on a failing or suspended account, fire an attempt at once."""
    row = await conn.fetchrow("SELECT gateway_customer_id FROM accounts WHERE id = $1", account_id)
    if row is None:
        raise AdminError(f"unknown account {account_id!r}")
    # The gateway call happens outside the transaction; attaching twice is harmless.
    attached = await gw.attach_card(
        account_id=account_id, customer_id=row["gateway_customer_id"], payment_method=payment_method
    )
    async with conn.transaction():
        account = await require_account(conn, account_id)
        await conn.execute(
            "UPDATE accounts SET payment_method = $2, gateway_customer_id = $3, "
            "updated_at = now() WHERE id = $1",
            account_id,
            attached.payment_method,
            attached.customer_id,
        )
        run_id = None
        failing = account["retry_tier"] > 0 or account["status"] == "suspended"
        if failing and account["auto_recharge_enabled"] and not account["auto_run_in_flight"]:
            run_id = await start_run(
                conn,
                account_id=account_id,
                kind="auto",
                trigger="card",
                tier=account["retry_tier"],
                target_amount=account["balance_amount"],
                recharge_amount=account["recharge_amount"],
                mode=account["recharge_mode"],
                max_charges=settings.run_max_charges,
            )
    return CardResult(attached.customer_id, attached.payment_method, run_id)


async def set_auto_recharge(
    conn: asyncpg.Connection[Any],
    account_id: str,
    settings: Settings,
    *,
    balance_amount: Decimal | None,
    recharge_amount: Decimal | None,
    mode: str = "repeat",
) -> int | None:
    """Enable (both amounts) or disable (None, None). Returns a run id when the balance is
    already below the new threshold: the recharge starts now, not at the next call."""
    async with conn.transaction():
        account = await require_account(conn, account_id)
        if balance_amount is None or recharge_amount is None:
            await conn.execute(
                "UPDATE accounts SET auto_recharge_enabled = false, updated_at = now() "
                "WHERE id = $1",
                account_id,
            )
            return None
        check_fits_minor_unit(balance_amount, account["currency"], field="balance amount")
        check_recharge_amount(
            recharge_amount,
            account["currency"],
            minimum=settings.min_recharge_amount,
            global_max=settings.max_recharge_amount,
            account_max=account["max_recharge_amount"],
        )
        await conn.execute(
            "UPDATE accounts SET auto_recharge_enabled = true, balance_amount = $2, "
            "recharge_amount = $3, recharge_mode = $4, updated_at = now() WHERE id = $1",
            account_id,
            balance_amount,
            recharge_amount,
            mode,
        )
        updated = await lock_account(conn, account_id)
        assert updated is not None
        config = PolicyConfig.from_settings(settings)
        decision = decide_recharge(
            snapshot(updated), now=updated["db_now"], retry_min_interval=config.retry_min_interval
        )
        if isinstance(decision, StartRecharge):
            return await start_auto_run(conn, updated, decision, config, "threshold")
        return None


async def set_max_recharge(
    conn: asyncpg.Connection[Any], account_id: str, amount: Decimal | None
) -> None:
    """Support raises (or resets, with None) the largest single recharge of one account."""
    async with conn.transaction():
        account = await require_account(conn, account_id)
        if amount is not None:
            check_fits_minor_unit(amount, account["currency"], field="maximum")
        await conn.execute(
            "UPDATE accounts SET max_recharge_amount = $2, updated_at = now() WHERE id = $1",
            account_id,
            amount,
        )


async def request_manual_recharge(
    conn: asyncpg.Connection[Any], account_id: str, amount: Decimal, settings: Settings
) -> int:
    async with conn.transaction():
        account = await require_account(conn, account_id)
        check_recharge_amount(
            amount,
            account["currency"],
            minimum=settings.min_recharge_amount,
            global_max=settings.max_recharge_amount,
            account_max=account["max_recharge_amount"],
        )
        if account["payment_method"] is None:
            raise AdminError(
                f"account {account_id!r} has no card on file "
                "(contacto-billing accounts card ACCOUNT --payment-method PM)"
            )
        run_id = await start_run(
            conn,
            account_id=account_id,
            kind="manual",
            trigger="manual",
            tier=account["retry_tier"],
            target_amount=None,
            recharge_amount=amount,
            mode="repeat",
            max_charges=1,
        )
        if run_id is None:
            raise AdminError(f"a manual recharge of account {account_id!r} is already in progress")
        return run_id


async def run_summary(conn: asyncpg.Connection[Any], run_id: int) -> dict[str, Any]:
    run = await conn.fetchrow(
        "SELECT r.id, r.account_id, r.kind, r.state, r.error, a.balance, a.status "
        "FROM recharge_runs r JOIN accounts a ON a.id = r.account_id WHERE r.id = $1",
        run_id,
    )
    if run is None:
        raise AdminError(f"unknown recharge run {run_id}")
    charges = await conn.fetch(
        "SELECT amount, status, idempotency_key, failure_code FROM charges WHERE run_id = $1 "
        "ORDER BY seq",
        run_id,
    )
    return {**dict(run), "charges": [dict(c) for c in charges]}
