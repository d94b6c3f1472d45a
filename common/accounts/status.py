"""An account's ladder tier and status: every change written with its history row and event.

The decisions are the pure policy's (common/recharge/policy.py); this module applies them to a
locked account, in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg

from common.accounts.store import REACTIVATE, SET_TIER, SUSPEND
from common.names import EVENT_ACCOUNT_REACTIVATED, EVENT_ACCOUNT_SUSPENDED
from common.outbox.store import emit_event
from common.recharge.policy import (
    Reactivate,
    StatusChange,
    Suspend,
    SuspendedReason,
    prepaid_status,
)

# account_history.cause
CAUSE_ARMED: Final = "ladder.armed"
CAUSE_RESET: Final = "ladder.reset"
CAUSE_LADDER_SUSPENDED: Final = "ladder.suspended"
CAUSE_PREPAID_SUSPENDED: Final = "prepaid.suspended"
CAUSE_REACTIVATED: Final = "account.reactivated"


async def set_tier(
    conn: asyncpg.Connection[Any],
    account_id: str,
    tier: int,
    last_failure_at: datetime | None,
    *,
    cause: str,
    run_id: int | None = None,
    charge_id: int | None = None,
) -> None:
    await conn.execute(SET_TIER, account_id, cause, run_id, charge_id, tier, last_failure_at)


async def suspend(
    conn: asyncpg.Connection[Any],
    account_id: str,
    reason: SuspendedReason,
    *,
    balance: Decimal,
    run_id: int | None = None,
    charge_id: int | None = None,
) -> None:
    cause = CAUSE_LADDER_SUSPENDED if reason == "ladder" else CAUSE_PREPAID_SUSPENDED
    await conn.execute(SUSPEND, account_id, cause, run_id, charge_id, reason)
    await emit_event(
        conn,
        EVENT_ACCOUNT_SUSPENDED,
        {"account_id": account_id, "balance": balance, "run_id": run_id, "reason": reason},
    )


async def reactivate(
    conn: asyncpg.Connection[Any],
    account_id: str,
    *,
    balance: Decimal,
    run_id: int | None = None,
    charge_id: int | None = None,
) -> None:
    await conn.execute(REACTIVATE, account_id, CAUSE_REACTIVATED, run_id, charge_id)
    await emit_event(
        conn, EVENT_ACCOUNT_REACTIVATED, {"account_id": account_id, "balance": balance}
    )


async def apply_change(
    conn: asyncpg.Connection[Any],
    account_id: str,
    change: StatusChange | None,
    *,
    balance: Decimal,
    run_id: int | None = None,
    charge_id: int | None = None,
) -> None:
    if isinstance(change, Suspend):
        await suspend(
            conn, account_id, change.reason, balance=balance, run_id=run_id, charge_id=charge_id
        )
    elif isinstance(change, Reactivate):
        await reactivate(conn, account_id, balance=balance, run_id=run_id, charge_id=charge_id)


async def enforce_prepaid(
    conn: asyncpg.Connection[Any],
    account: Mapping[str, Any],
    *,
    balance: Decimal | None = None,
    auto_recharge_enabled: bool | None = None,
    auto_run_in_flight: bool | None = None,
    run_id: int | None = None,
) -> StatusChange | None:
    """Apply the prepaid rule to a locked account row, with whatever the caller changed since
    reading it given explicitly. Returns the change made, if any."""
    balance = account["balance"] if balance is None else balance
    change = prepaid_status(
        status=account["status"],
        suspended_reason=account["suspended_reason"],
        balance=balance,
        auto_recharge_enabled=(
            account["auto_recharge_enabled"]
            if auto_recharge_enabled is None
            else auto_recharge_enabled
        ),
        auto_run_in_flight=(
            account["auto_run_in_flight"] if auto_run_in_flight is None else auto_run_in_flight
        ),
    )
    await apply_change(conn, account["id"], change, balance=balance, run_id=run_id)
    return change
