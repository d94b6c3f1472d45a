"""Starting a recharge run: the run row and its outbox message, in the caller's transaction, at
most one automatic and one manual run in flight per account (the partial unique index decides
races). An automatic run is also recorded on the account row (`auto_run_id`), which the debit
statement reads from the row it locked."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from common.names import ACTOR_RUN_RECHARGE
from common.outbox.store import enqueue_message
from common.recharge import store
from common.recharge.config import PolicyConfig
from common.recharge.policy import StartRecharge

RunKind = Literal["auto", "manual"]
# threshold: the balance fell below T; tier: an armed tier's level was crossed; card: a new
# card fired the armed tier; manual: a top-up.
Trigger = Literal["threshold", "tier", "card", "manual"]


async def start_run(
    conn: asyncpg.Connection[Any],
    *,
    account_id: str,
    kind: RunKind,
    trigger: Trigger,
    tier: int,
    target_amount: Decimal | None,
    recharge_amount: Decimal,
    mode: str,
    max_charges: int,
) -> int | None:
    """Insert a pending run and the message that makes the charge worker run it.

    Returns the run id, or None when a run of that kind is already in flight.
    """
    run_id: int | None = await conn.fetchval(
        store.INSERT_RUN,
        account_id,
        kind,
        trigger,
        tier,
        target_amount,
        recharge_amount,
        mode,
        max_charges,
    )
    if run_id is not None:
        if kind == "auto":
            await conn.execute(store.SET_AUTO_RUN, account_id, run_id)
        await enqueue_message(conn, ACTOR_RUN_RECHARGE, {"run_id": run_id})
    return run_id


def auto_trigger(decision: StartRecharge) -> Trigger:
    """Why an automatic run starts: the balance fell below T, or an armed tier's level."""
    return "threshold" if decision.tier == 0 else "tier"


async def start_auto_run(
    conn: asyncpg.Connection[Any],
    account: Mapping[str, Any],
    decision: StartRecharge,
    config: PolicyConfig,
    *,
    trigger: Trigger | None = None,
) -> int | None:
    """Start the account's automatic run for `decision` (a locked account row); `trigger`
    overrides the reason the decision implies (a new card fires the armed tier at once)."""
    return await start_run(
        conn,
        account_id=account["id"],
        kind="auto",
        trigger=trigger or auto_trigger(decision),
        tier=decision.tier,
        target_amount=account["balance_amount"],
        recharge_amount=account["recharge_amount"],
        mode=account["recharge_mode"],
        max_charges=config.run_max_charges,
    )
