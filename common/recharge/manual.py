"""Manual recharges: a customer's (or support's) one-off top-up, run by the charge worker."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import asyncpg

from common.accounts.store import AccountError, require_account
from common.recharge import store
from common.recharge.limits import check_recharge_amount
from common.recharge.runs import RunStart, start_run
from config.settings import Settings

FINAL_RUN_STATES: Final = ("succeeded", "failed", "capped")


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
            raise AccountError(
                f"account {account_id!r} has no card on file "
                "(contacto-billing accounts card ACCOUNT --payment-method PM)"
            )
        run_id = await start_run(
            conn,
            RunStart(
                account_id=account_id,
                kind="manual",
                trigger="manual",
                tier=account["retry_tier"],
                target_amount=None,
                recharge_amount=amount,
                mode="repeat",
                max_charges=1,
            ),
        )
        if run_id is None:
            raise AccountError(
                f"a manual recharge of account {account_id!r} is already in progress"
            )
        return run_id


async def run_summary(conn: asyncpg.Connection[Any], run_id: int) -> dict[str, Any]:
    run = await conn.fetchrow(store.RUN_SUMMARY, run_id)
    if run is None:
        raise AccountError(f"unknown recharge run {run_id}")
    charges = await conn.fetch(store.RUN_CHARGES, run_id)
    return {**dict(run), "charges": [dict(c) for c in charges]}
