"""The retry worker's service: after a failed attempt arm the next tier or suspend; re-check
armed tiers so that an idle account still walks the ladder."""

from __future__ import annotations

from typing import Any

import asyncpg

from common.accounts.store import lock_account, lock_run, snapshot
from common.names import (
    ACTOR_RECHECK_TIER,
    EVENT_ACCOUNT_SUSPENDED,
    EVENT_RECHARGE_FAILED,
)
from common.outbox.store import emit_event, enqueue_message
from common.recharge.config import PolicyConfig
from common.recharge.policy import (
    MAX_TIER,
    ArmTier,
    Hold,
    StartRecharge,
    after_failed_attempt,
    decide_recharge,
)
from common.recharge.runs import start_auto_run


async def record_failure(conn: asyncpg.Connection[Any], run_id: int, config: PolicyConfig) -> str:
    """Finish a 'failing' run: arm the next tier (or suspend) exactly once."""
    async with conn.transaction():
        account, run = await lock_run(conn, run_id)
        if account is None or run is None or run["state"] != "failing":
            return "already_handled"
        charge = await conn.fetchrow(
            "SELECT id, amount, failure_code, failure_message, updated_at, idempotency_key "
            "FROM charges WHERE run_id = $1 AND status = 'failed' ORDER BY seq DESC LIMIT 1",
            run_id,
        )
        assert charge is not None, "a failing run has a failed charge"
        await conn.execute(
            "UPDATE recharge_runs SET state = 'failed', finished_at = now() WHERE id = $1", run_id
        )
        event: dict[str, Any] = {
            "account_id": account["id"],
            "run_id": run_id,
            "kind": run["kind"],
            "charge_id": charge["id"],
            "amount": charge["amount"],
            "idempotency_key": charge["idempotency_key"],
            "code": charge["failure_code"],
            "message": charge["failure_message"],
            "tier": run["tier"],
            "balance": account["balance"],
        }
        # A failed manual recharge, or one after auto-recharge was switched off, is reported
        # but does not walk the ladder: the ladder belongs to automatic recharges.
        if run["kind"] != "auto" or account["balance_amount"] is None:
            await emit_event(conn, EVENT_RECHARGE_FAILED, event)
            return "failed"
        decision = after_failed_attempt(
            tier=run["tier"], balance=account["balance"], balance_amount=account["balance_amount"]
        )
        failed_at = charge["updated_at"]
        if isinstance(decision, ArmTier):
            await conn.execute(
                "UPDATE accounts SET retry_tier = $2, last_failure_at = $3, updated_at = now() "
                "WHERE id = $1",
                account["id"],
                decision.tier,
                failed_at,
            )
            await enqueue_message(
                conn,
                ACTOR_RECHECK_TIER,
                {"account_id": account["id"]},
                deliver_at=failed_at + config.retry_min_interval,
            )
            await emit_event(
                conn,
                EVENT_RECHARGE_FAILED,
                {**event, "next_tier": decision.tier, "next_level": decision.level},
            )
            return f"armed_tier_{decision.tier}"
        await conn.execute(
            "UPDATE accounts SET status = 'suspended', retry_tier = $3, last_failure_at = $2, "
            "suspended_at = coalesce(suspended_at, now()), updated_at = now() WHERE id = $1",
            account["id"],
            failed_at,
            MAX_TIER,
        )
        await emit_event(
            conn, EVENT_RECHARGE_FAILED, {**event, "next_tier": None, "suspended": True}
        )
        if account["status"] != "suspended":
            await emit_event(
                conn,
                EVENT_ACCOUNT_SUSPENDED,
                {"account_id": account["id"], "balance": account["balance"], "run_id": run_id},
            )
        return "suspended"


async def recheck_tier(conn: asyncpg.Connection[Any], account_id: str, config: PolicyConfig) -> str:
    """Fire the armed tier if its level is crossed and the interval has passed."""
    async with conn.transaction():
        account = await lock_account(conn, account_id)
        if account is None:
            return "unknown_account"
        decision = decide_recharge(
            snapshot(account), now=account["db_now"], retry_min_interval=config.retry_min_interval
        )
        if isinstance(decision, StartRecharge):
            run_id = await start_auto_run(conn, account, decision, config)
            return f"started_run_{run_id}"
        assert isinstance(decision, Hold)
        if decision.reason == "interval" and decision.retry_at is not None:
            await enqueue_message(
                conn, ACTOR_RECHECK_TIER, {"account_id": account_id}, deliver_at=decision.retry_at
            )
        return decision.reason
